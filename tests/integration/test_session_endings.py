"""Session endings explained (issue 15): 410 with the reason and checkpoint, the log lines.

Sessions the hub or an admin ended stay listed and answer 410 ``{detail, reason,
checkpoint_id}`` for ``SessionManager.ended_linger`` (also after a hub restart, from the
store), then 404; a session its owner ended answers 404 at once. Culls go through the
cull pass with moved-back clocks (no waiting for an idle timeout); the workers are real
processes of the test session factory (its bundle is its values as JSON). The client
half drives :class:`PhoebeClient` against a hub on a background thread.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from phoebe_spawner.client import (
    PhoebeClient,
    PhoebeClientError,
    SessionEnded,
    SessionNotFound,
    WorkerUnavailable,
)

from ..conftest import Client
from ..waiting import async_wait_for
from .hub_thread import ThreadedHub

TORNADO_LOGS = ("access", "general", "application")


class Lines(logging.Handler):
    """Every line the hub logs (its own logger, and tornado's, which it parents)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def matching(self, text: str) -> list[str]:
        return [m for m in self.messages if text in m]


@pytest.fixture
def watch_log() -> Any:
    """``lines = watch_log(app)``: every line of the hub log and tornado's (whose loggers a
    hub built without its command line does not parent), at every level; the handlers and
    levels are put back after the test."""
    undo: list[Any] = []

    def watch(app: Any) -> Lines:
        lines = Lines()
        for logger in (app.log, *(logging.getLogger(f"tornado.{n}") for n in TORNADO_LOGS)):
            level = logger.level
            undo.append(lambda logger=logger, level=level: logger.setLevel(level))
            logger.setLevel(logging.DEBUG)
            if logger is app.log or logger.parent is not app.log:
                logger.addHandler(lines)
                undo.append(lambda logger=logger: logger.removeHandler(lines))
        return lines

    yield watch
    for step in reversed(undo):
        step()


async def start(client: Client, body: dict[str, Any] | None = None) -> str:
    resp = await client.post("/dash/start-session", body or {})
    assert resp.status == 200, resp.body
    return str(resp.json()["session_id"])


async def cull(app: Any, sid: str) -> None:
    """Cull ``sid`` through the cull pass: its last command dated past the idle timeout."""
    app.manager.sessions[sid].last_activity = time.time() - app.manager.idle_timeout - 1
    await app.manager.cull_idle()
    assert app.manager.sessions[sid].status == "culled"


async def hub_checkpoints(client: Client, sid: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/api/v1/checkpoints?session_id={sid}")
    assert resp.status == 200, resp.body
    found: list[dict[str, Any]] = resp.json()["checkpoints"]
    return found


async def test_a_culled_session_answers_410_with_its_reason_and_checkpoint(make_hub):
    app, client = await make_hub(SessionManager__idle_timeout=600, SessionManager__ended_linger=300)
    sid = await start(client, {"project_name": "algol"})
    assert (await client.send(sid, "set_value", twig="kept", value=7)).status == 200
    await cull(app, sid)
    listed = (await client.get("/dash/sessions")).json()[sid]
    reason = listed["reason"]
    assert listed["status"] == "culled" and reason == "idle for 601 s"
    [checkpoint] = await hub_checkpoints(client, sid)
    assert checkpoint["reason"] == "cull"
    cid = checkpoint["checkpoint_id"]
    expected = {
        "detail": f"Session {sid} was culled: {reason}; checkpoint {cid} was saved at its "
        "end (start from it)",
        "reason": reason,
        "checkpoint_id": cid,
    }
    for resp in (
        await client.send(sid, "get_value", twig="kept"),
        await client.post(f"/api/v1/sessions/{sid}/jobs", {"command": "echo"}),
        await client.post(f"/api/v1/sessions/{sid}/checkpoints", {}),
    ):
        assert (resp.status, resp.json()) == (410, expected)
    # the checkpoint starts a new session with the model as it was
    new = await start(client, {"checkpoint_id": cid})
    resp = await client.send(new, "get_value", twig="kept")
    assert resp.json() == {"success": True, "result": 7}
    # past ended_linger: dropped, and 404 like any unknown session
    app.manager.sessions[sid].ended_at = time.time() - 301
    await app.manager.poll_all()
    assert sid not in (await client.get("/dash/sessions")).json()
    resp = await client.send(sid, "ping")
    assert resp.status == 404 and resp.json() == {"detail": f"Session {sid} not found"}


async def test_failed_linger_still_governs_failures_while_ended_linger_governs_culls(make_hub):
    app, client = await make_hub(
        SessionManager__idle_timeout=600,
        SessionManager__failed_linger=100,
        SessionManager__ended_linger=1000,
    )
    culled, failed = await start(client), await start(client)
    await cull(app, culled)
    assert (await client.send(failed, "crash", status=3)).status == 503
    manager = app.manager
    await async_wait_for(
        lambda: manager.sessions[failed].status == "failed", "the session to fail", timeout=10
    )
    for sid in (culled, failed):
        manager.sessions[sid].ended_at = time.time() - 500  # past failed_linger only
    await manager.poll_all()
    assert (await client.send(culled, "ping")).status == 410
    assert (await client.send(failed, "ping")).status == 404


async def test_owner_end_is_404_and_admin_end_is_410_without_a_checkpoint(make_hub):
    app, client = await make_hub()
    mine, ended_by_admin = await start(client), await start(client)
    assert (await client.post(f"/dash/end-session/{mine}")).status == 200
    resp = await client.send(mine, "ping")
    assert resp.status == 404 and resp.json() == {"detail": f"Session {mine} not found"}
    await async_wait_for(lambda: mine not in app.manager.sessions, "the owner's end to finish")
    assert mine not in (await client.get("/dash/sessions")).json()

    # in auth mode none the one anonymous user is the admin
    resp = await client.request("DELETE", f"/api/v1/admin/sessions/{ended_by_admin}")
    assert resp.status == 200, resp.body
    await async_wait_for(lambda: not app.manager.active(), "the admin's end to finish")
    listed = (await client.get("/dash/sessions")).json()[ended_by_admin]
    assert (listed["status"], listed["reason"]) == ("stopped", "ended by admin anonymous")
    resp = await client.send(ended_by_admin, "ping")
    assert (resp.status, resp.json()) == (
        410,
        {
            "detail": f"Session {ended_by_admin} was stopped: ended by admin anonymous",
            "reason": "ended by admin anonymous",
            "checkpoint_id": None,
        },
    )
    # its owner may dismiss it: then it is gone for good (404)
    assert (await client.post(f"/dash/end-session/{ended_by_admin}")).status == 200
    assert (await client.send(ended_by_admin, "ping")).status == 404


async def test_410_survives_a_hub_restart_within_the_linger_window(make_hub, tmp_path):
    data = tmp_path / "shared"
    config = {"SessionManager__idle_timeout": 600, "SessionManager__ended_linger": 3600}
    app1, client1 = await make_hub(data_dir=data, **config)
    culled, owned, at_shutdown = [await start(client1) for _ in range(3)]
    assert (await client1.send(culled, "set_value", twig="kept", value=1)).status == 200
    await cull(app1, culled)
    assert (await client1.post(f"/dash/end-session/{owned}")).status == 200
    await app1.cleanup()  # checkpoints and stops the live one: "hub shutdown"

    app2, client2 = await make_hub(data_dir=data, **config)
    assert app2.manager.sessions == {}  # ended sessions are not loaded, only looked up
    for sid, reason, checkpoint_reason in (
        (culled, "idle for 601 s", "cull"),
        (at_shutdown, "hub shutdown", "shutdown"),
    ):
        [checkpoint] = await hub_checkpoints(client2, sid)
        assert checkpoint["reason"] == checkpoint_reason
        resp = await client2.send(sid, "ping")
        body = resp.json()
        assert resp.status == 410, resp.body
        assert (body["reason"], body["checkpoint_id"]) == (reason, checkpoint["checkpoint_id"])
    assert (await client2.send(owned, "ping")).status == 404  # its owner ended it
    assert (await client2.send(str(uuid.uuid4()), "ping")).status == 404
    assert (await client2.send("not-a-session-id", "ping")).status == 404

    # past the linger window (the stored end dated back before it is first looked up)
    app3, client3 = await make_hub(data_dir=tmp_path / "other", **config)
    sid = await start(client3)
    await cull(app3, sid)
    app3.manager.sessions.clear()  # as after a restart: only the store knows the session
    await app3.store.update_session(sid, stopped_at=time.time() - 3601)
    assert (await client3.send(sid, "ping")).status == 404


async def test_log_lines_for_starts_ends_commands_and_requests(make_hub, watch_log):
    app, client = await make_hub(SessionManager__idle_timeout=600)
    lines = watch_log(app)
    owned, culled, by_admin = [await start(client) for _ in range(3)]
    assert (await client.send(owned, "ping")).status == 200
    assert (await client.post(f"/dash/end-session/{owned}")).status == 200
    await cull(app, culled)
    cid = (await hub_checkpoints(client, culled))[0]["checkpoint_id"]
    assert (await client.request("DELETE", f"/api/v1/admin/sessions/{by_admin}")).status == 200
    await async_wait_for(lambda: not app.manager.active(), "the ends to finish")

    # one INFO line per start and per end: whose session, who ended it, and why
    for sid in (owned, culled, by_admin):
        [started] = lines.matching(f"session {sid} of anonymous started")
        assert re.fullmatch(rf"session {sid} of anonymous started \(\d+ ms\)", started)
    assert lines.matching(f"session {owned} of anonymous ended") == [
        f"session {owned} of anonymous ended (stopped) by the user: ended by user"
    ]
    assert lines.matching(f"session {culled} of anonymous ended") == [
        f"session {culled} of anonymous ended (culled) by the hub: idle for 601 s "
        f"(checkpoint {cid})"
    ]
    assert lines.matching(f"session {by_admin} of anonymous ended") == [
        f"session {by_admin} of anonymous ended (stopped) by admin anonymous: "
        "ended by admin anonymous"
    ]
    # command names at debug level
    assert lines.matching(f"session {owned} of anonymous: ping ok (")
    # each refused request logged once, with the detail the client got
    unknown = str(uuid.uuid4())
    assert (await client.send(unknown, "ping")).status == 404
    assert (await client.send(culled, "ping")).status == 410
    [not_found] = lines.matching(f"/send/{unknown}")
    assert not_found.startswith(f"404 POST /send/{unknown} (127.0.0.1) ")
    assert not_found.endswith(f": Session {unknown} not found")
    [gone] = lines.matching(f"POST /send/{culled}")
    assert gone.startswith("410 ") and gone.endswith(
        f"; checkpoint {cid} was saved at its end (start from it)"
    )


def test_log_lines_carry_a_timestamp_by_default(tmp_path: Path) -> None:
    from phoebe_spawner.app import PhoebeSpawnerApp

    app = PhoebeSpawnerApp()
    formatted = [
        h.formatter.format(logging.LogRecord(app.log.name, logging.INFO, "", 0, "hello", (), None))
        for h in app.log.handlers
        if h.formatter is not None
    ]
    assert formatted, app.log.handlers
    for line in formatted:
        assert re.fullmatch(
            r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} PhoebeSpawnerApp\] hello", line
        )


# --- the client -----------------------------------------------------------------------------


@pytest.fixture
def hub(tmp_path: Path) -> Any:
    with ThreadedHub(tmp_path / "hub", SessionManager__idle_timeout=600) as h:
        yield h


def test_client_raises_session_ended_and_restarts_from_the_checkpoint(hub: ThreadedHub) -> None:
    with PhoebeClient(hub.url) as client:
        first = client.start_session(project_name="algol")["session_id"]
        client.set_value("kept", 7)
        hub.run(cull(hub.app, first))
        with pytest.raises(SessionEnded) as ended:
            client.get_value("kept")
        assert isinstance(ended.value, WorkerUnavailable)  # what failed sessions raised before
        assert (ended.value.status, ended.value.reason) == (410, "idle for 601 s")
        [checkpoint] = client.list_checkpoints(session_id=first)
        assert ended.value.checkpoint_id == checkpoint["checkpoint_id"]
        with pytest.raises(SessionEnded):
            client.submit_job("echo", x=1)

        session = client.restart_from_checkpoint(ended.value)
        second = session["session_id"]
        assert client.session_id == second != first
        assert session["project_name"] == "algol"
        assert client.get_value("kept") == 7

        # an admin's end: 410, no checkpoint to restart from
        hub.http("DELETE", f"api/v1/admin/sessions/{second}")
        with pytest.raises(SessionEnded) as by_admin:
            client.ping()
        assert (by_admin.value.reason, by_admin.value.checkpoint_id) == (
            "ended by admin anonymous",
            None,
        )
        with pytest.raises(PhoebeClientError, match="no checkpoint was saved"):
            client.restart_from_checkpoint(by_admin.value)

        # the owner's own end: 404, as the old server answered
        third = client.start_session()["session_id"]
        client.end_session()
        with pytest.raises(SessionNotFound):
            client.ping(session_id=third)
