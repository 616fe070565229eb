"""Session starts that a real hub refuses with ``Retry-After``, and the client waiting them out.

The hub sends ``Retry-After`` (whole seconds, rounded up) on a start refused by the
per-user start rate (429) and by a busy database (503); the client sends such a start
again after that wait, a bounded number of times, and never waits longer than its cap.
Refusals without ``Retry-After`` are raised at once. The hub runs on a thread
(:mod:`.hub_thread`), its database locked for real by a second SQLite connection.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from phoebe_spawner.client import LimitReached, PhoebeClient, RateLimited, WorkerUnavailable

from .hub_thread import ThreadedHub

PASSWORD = "correct horse battery"


class ClientLog(logging.Handler):
    """The client's log lines; ``on_retry`` runs at each "trying again" line (before the
    client's wait), to change the hub's state at exactly that point."""

    def __init__(self, on_retry: Any = None) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []
        self.on_retry = on_retry

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(message)
        if self.on_retry is not None and "trying again" in message:
            self.on_retry()

    def retries(self) -> list[str]:
        return [m for m in self.messages if "trying again" in m]


@contextmanager
def client_log(on_retry: Any = None) -> Iterator[ClientLog]:
    logger = logging.getLogger("phoebe_spawner.client")
    handler, level = ClientLog(on_retry), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def make_threaded_hub(tmp_path: Path) -> Iterator[Any]:
    hubs: list[ThreadedHub] = []

    def factory(**kwargs: Any) -> ThreadedHub:
        h = ThreadedHub(tmp_path / f"hub{len(hubs)}", **kwargs).__enter__()
        hubs.append(h)
        return h

    yield factory
    for h in reversed(hubs):
        h.__exit__(None, None, None)


class Clock:
    """The hub's start-limiter clock, moved by the test (never by the wall clock)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_start_refused_by_the_start_rate_is_sent_again_after_retry_after(
    make_threaded_hub: Any,
) -> None:
    hub = make_threaded_hub(
        auth_mode="jwt",
        SessionManager__start_rate_per_minute=60.0,  # one start a second, no burst
        SessionManager__start_burst=1,
    )
    clock = Clock()
    hub.app.manager._start_limiter.clock = clock
    token = hub.register("ada@example.org", PASSWORD)

    def one_second_passes() -> None:  # on the hub's limiter clock, while the client waits
        clock.now += 1.0

    with (
        PhoebeClient(hub.url, token=token) as client,
        client_log(on_retry=one_second_passes) as log,
    ):
        first = client.start_session()["session_id"]
        second = client.start_session()["session_id"]  # refused once, then started
        assert first != second and client.session_id == second
        assert len(client.get_sessions()) == 2  # the refused attempt started nothing
    assert log.retries() == [
        "session start refused (Too many session starts; try again in 1 s); "
        "trying again in 1 s (1 of 5)"
    ]


def test_no_wait_longer_than_the_cap_and_no_more_than_the_retries(
    make_threaded_hub: Any,
) -> None:
    # one start a minute: the next start is refused with Retry-After close to 60 s
    hub = make_threaded_hub(
        auth_mode="jwt",
        SessionManager__start_rate_per_minute=1.0,
        SessionManager__start_burst=1,
    )
    token = hub.register("ada@example.org", PASSWORD)
    with client_log() as log, PhoebeClient(hub.url, token=token, max_retry_wait=50) as client:
        client.start_session()
        with pytest.raises(RateLimited) as capped:
            client.start_session()  # over the cap: raised without waiting
        assert capped.value.retry_after is not None and capped.value.retry_after > 50
        client.max_retry_wait, client.start_retries = 120, 0
        with pytest.raises(RateLimited):
            client.start_session()  # under the cap, but no retries left
    assert log.retries() == []


def test_refusals_without_retry_after_are_raised_at_once(make_threaded_hub: Any) -> None:
    hub = make_threaded_hub(SessionManager__max_sessions=1)
    with PhoebeClient(hub.url) as client, client_log() as log:
        client.start_session()
        with pytest.raises(LimitReached) as full:
            client.start_session()
        assert not isinstance(full.value, RateLimited) and full.value.retry_after is None
        assert full.value.detail == "Capacity reached: 1 sessions are running"
    assert log.retries() == []


def test_a_start_refused_by_a_busy_database_is_sent_again(
    make_threaded_hub: Any, tmp_path: Path
) -> None:
    db = tmp_path / "locked.sqlite"
    hub = make_threaded_hub(
        PhoebeSpawnerApp__db_url=f"sqlite:///{db}", PhoebeSpawnerApp__db_busy_timeout=0.3
    )
    blocker = sqlite3.connect(db, isolation_level=None)
    try:
        with PhoebeClient(hub.url, start_retries=2) as client:
            blocker.execute("BEGIN EXCLUSIVE")
            with client_log() as log, pytest.raises(WorkerUnavailable) as busy:
                client.start_session()  # locked throughout: two waits, then raised
            assert busy.value.retry_after == 1 and "Database unavailable" in busy.value.detail
            assert [line.rsplit("(", 1)[1] for line in log.retries()] == ["1 of 2)", "2 of 2)"]

            # released while the client waits after its first refusal: the retry starts it
            with client_log(on_retry=lambda: blocker.execute("ROLLBACK")) as log:
                session = client.start_session()
            assert session["status"] == "running" and len(log.retries()) == 1
            assert list(client.get_sessions()) == [session["session_id"]]
    finally:
        if blocker.in_transaction:
            blocker.execute("ROLLBACK")
        blocker.close()
