"""The session event bus: subscribers by event type, in order, isolated from each other."""

from __future__ import annotations

import logging

import pytest

from phoebe_spawner.sessions.bus import CommandFinished, EventBus, SessionChanged


def test_subscribers_get_only_their_type_in_subscription_order():
    bus = EventBus()
    seen: list[tuple[str, object]] = []
    bus.subscribe(SessionChanged, lambda e: seen.append(("first", e.event)))
    bus.subscribe(CommandFinished, lambda e: seen.append(("command", e.command)))
    bus.subscribe(SessionChanged, lambda e: seen.append(("second", e.event)))
    bus.publish(SessionChanged("started", "s1"))
    bus.publish(CommandFinished("s1", "ping", 0.001, None))
    assert seen == [("first", "started"), ("second", "started"), ("command", "ping")]


def test_a_failing_subscriber_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
):
    bus = EventBus()
    seen: list[str] = []

    def broken(event: SessionChanged[str]) -> None:
        raise RuntimeError("boom")

    bus.subscribe(SessionChanged, broken)
    bus.subscribe(SessionChanged, lambda e: seen.append(e.session))
    with caplog.at_level(logging.ERROR, logger="phoebe_spawner.sessions.bus"):
        bus.publish(SessionChanged("failed", "s2"))
    assert seen == ["s2"]
    assert "a subscriber of SessionChanged failed" in caplog.text


def test_has_subscribers_tells_publishers_whether_to_build_an_event():
    bus = EventBus()
    assert not bus.has_subscribers(CommandFinished)
    bus.subscribe(CommandFinished, lambda e: None)
    assert bus.has_subscribers(CommandFinished)
    assert not bus.has_subscribers(SessionChanged)
