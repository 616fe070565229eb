"""Culling and checkpoints as docs/checkpoints.md and docs/architecture.md promise them.

The cull pass is driven directly (``SessionManager.cull_idle``; the hubs' own cull loop
runs once an hour in tests) and time is moved by dating a session's activity, start or
end back, so no test waits for an idle timeout. Real worker processes (the test
session factory: its bundle is its values as JSON).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from phoebe_spawner.auth.base import User

from ..conftest import Client
from ..waiting import async_wait_for


class Records(logging.Handler):
    """The hub log's warnings and errors (the app's logger does not propagate)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def watch_log(app: Any) -> Records:
    records = Records()
    app.log.addHandler(records)
    return records


async def start(client: Client) -> str:
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 200, resp.body
    return str(resp.json()["session_id"])


async def set_value(client: Client, sid: str, twig: str, value: Any) -> None:
    resp = await client.send(sid, "set_value", twig=twig, value=value)
    assert resp.status == 200 and resp.json()["success"] is True, resp.body


def idle_for(app: Any, sid: str, seconds: float) -> None:
    """Date the session's last command ``seconds`` back (no waiting for the idle time)."""
    app.manager.sessions[sid].last_activity = time.time() - seconds


def checkpoint_files(app: Any) -> list[Path]:
    return sorted(Path(app.data_dir, "checkpoints").rglob("*.json"))


async def checkpoints(client: Client) -> list[dict[str, Any]]:
    resp = await client.get("/api/v1/checkpoints")
    assert resp.status == 200, resp.body
    found: list[dict[str, Any]] = resp.json()["checkpoints"]
    return found


# --- a cull is called off when its checkpoint cannot be taken --------------------------------


async def test_cull_is_called_off_while_the_database_is_down(make_hub, tmp_path):
    db = tmp_path / "culling.sqlite"
    app, client = await make_hub(
        PhoebeSpawnerApp__db_url=f"sqlite:///{db}",
        PhoebeSpawnerApp__db_busy_timeout=0.3,
        SessionManager__idle_timeout=600,
    )
    sid = await start(client)
    await set_value(client, sid, "kept", 1)
    idle_for(app, sid, 601)
    records = watch_log(app)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # writers get "database is locked"
    try:
        await app.manager.cull_idle()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    called_off = [m for m in records.messages if m.startswith(f"not culling session {sid}")]
    assert called_off == [
        f"not culling session {sid}: checkpoint failed: database unavailable: database is locked"
    ]
    assert app.manager.sessions[sid].status == "running"
    assert (await app.store.get_session(sid))["status"] == "running"
    assert checkpoint_files(app) == []  # the written file was removed with the failed row
    assert (await client.send(sid, "get_value", twig="kept")).json()["result"] == 1
    # the next pass, with the database back, checkpoints and culls
    idle_for(app, sid, 601)
    await app.manager.cull_idle()
    assert app.manager.sessions[sid].status == "culled"  # listed, with its reason
    row = await app.store.get_session(sid)
    assert row["status"] == "culled" and row["termination_reason"].startswith("idle for ")
    assert [(c["reason"], c["session_id"]) for c in await checkpoints(client)] == [("cull", sid)]


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        (
            "CheckpointManager__max_bytes_per_user",
            r"The bundle \(\d+ bytes\) is larger than the checkpoint quota \(50 bytes\)",
        ),
        (
            "CheckpointManager__max_checkpoint_bytes",
            r"The bundle is \d+ bytes; a checkpoint may have 50",
        ),
    ],
    ids=["max_bytes_per_user", "max_checkpoint_bytes"],
)
async def test_cull_is_called_off_when_the_checkpoint_exceeds_the_quota(make_hub, limit, message):
    app, client = await make_hub(SessionManager__idle_timeout=600, **{limit: 50})
    sid = await start(client)
    await set_value(client, sid, "model", "x" * 100)  # a bundle of well over 50 bytes
    idle_for(app, sid, 601)
    records = watch_log(app)
    await app.manager.cull_idle()
    (line,) = [m for m in records.messages if m.startswith(f"not culling session {sid}")]
    assert re.fullmatch(f"not culling session {sid}: checkpoint failed: {message}", line), line
    assert app.manager.sessions[sid].status == "running"
    assert checkpoint_files(app) == [] and await checkpoints(client) == []
    # the user makes room (a smaller model): the next pass culls after a checkpoint
    await set_value(client, sid, "model", "x")
    idle_for(app, sid, 601)
    await app.manager.cull_idle()
    assert (await app.store.get_session(sid))["status"] == "culled"
    assert [c["reason"] for c in await checkpoints(client)] == ["cull"]


# --- shutdown: a hung worker cannot hold the shutdown up ------------------------------------


async def test_shutdown_timeout_skips_the_checkpoint_of_a_hung_worker(make_hub, tmp_path):
    data = tmp_path / "shared"
    app, client = await make_hub(data_dir=data, CheckpointManager__shutdown_timeout=0.5)
    hung = await start(client)
    fine = await start(client)
    await set_value(client, fine, "kept", 2)
    hung_pid = app.manager.sessions[hung].spawner.pid
    hanging = asyncio.ensure_future(client.send(hung, "hang"))
    await async_wait_for(
        lambda: app.manager.sessions[hung].in_flight == 1,
        "the hanging command to be in flight",
        timeout=10,
    )
    records = watch_log(app)
    await app.cleanup()
    await asyncio.gather(hanging, return_exceptions=True)  # the hub went away under it
    assert (
        records.messages.count(
            f"no checkpoint of session {hung} at shutdown: Command 'get_bundle' waited 0.5 s "
            "for the session's previous command"
        )
        == 1
    )
    assert not any(f"session {fine}" in m for m in records.messages)
    # the shutdown went on: both workers stopped, the hung one without a checkpoint
    assert not psutil.pid_exists(hung_pid) or (
        psutil.Process(hung_pid).status() == psutil.STATUS_ZOMBIE
    )
    app2, client2 = await make_hub(data_dir=data)
    for sid in (hung, fine):
        row = await app2.store.get_session(sid)
        assert (row["status"], row["termination_reason"]) == ("stopped", "hub shutdown")
    saved = {c["session_id"]: c["reason"] for c in await checkpoints(client2)}
    assert saved == {fine: "shutdown"}


# --- retention: the byte quota drops the oldest ---------------------------------------------


async def test_byte_quota_drops_the_oldest_checkpoints(make_hub):
    app, client = await make_hub()
    sid = await start(client)
    made: list[dict[str, Any]] = []
    for i in range(3):
        await set_value(client, sid, "model", f"{i}" * 100)
        resp = await client.post(f"/api/v1/sessions/{sid}/checkpoints", {"name": f"cp{i}"})
        assert resp.status == 201, resp.body
        made.append(resp.json())
    size = made[0]["size"]
    assert {c["size"] for c in made} == {size}  # equal sizes: the quota arithmetic is exact
    # room for two of them: one more drops exactly the oldest
    app.checkpoints.max_bytes_per_user = 2 * size
    await set_value(client, sid, "model", "3" * 100)
    resp = await client.post(f"/api/v1/sessions/{sid}/checkpoints", {"name": "cp3"})
    assert resp.status == 201, resp.body
    newest = resp.json()
    assert [c["name"] for c in await checkpoints(client)] == ["cp3", "cp2"]
    assert (await client.get(made[0]["links"]["self"])).status == 404
    assert (await client.get(made[1]["links"]["self"])).status == 404
    assert len(checkpoint_files(app)) == 2
    # one twice as large as the others drops both older ones, never the new one
    await set_value(client, sid, "model", "4" * (100 + size))
    resp = await client.post(f"/api/v1/sessions/{sid}/checkpoints", {"name": "big"})
    assert resp.status == 201, resp.body
    big = resp.json()
    assert big["size"] <= 2 * size < big["size"] + size
    listed = await checkpoints(client)
    assert [c["name"] for c in listed] == ["big"]
    assert (await client.get(newest["links"]["self"])).status == 404
    assert len(checkpoint_files(app)) == 1
    bundle = await client.get(big["links"]["bundle"])
    assert bundle.status == 200 and "4" * (100 + size) in bundle.body.decode()


# --- max_age: culled however busy, after a checkpoint, never mid-command ---------------------


async def test_max_age_cull_checkpoints_first_and_never_interrupts_a_command(make_hub):
    app, client = await make_hub(SessionManager__max_age=3600, SessionManager__idle_timeout=0)
    sid = await start(client)
    await set_value(client, sid, "period", 2.5)  # just used: not idle
    s = app.manager.sessions[sid]
    s.created_at -= 3601
    busy = asyncio.ensure_future(client.send(sid, "sleep", seconds=1.0))
    await async_wait_for(lambda: s.in_flight == 1, "the command to be in flight", timeout=10)
    await app.manager.cull_idle()
    assert s.status == "running"  # never in the middle of a command
    reply = await busy
    assert reply.json() == {"success": True, "result": {"slept": 1.0}}
    await app.manager.cull_idle()
    assert app.manager.sessions[sid].status == "culled"  # listed, with its reason
    row = await app.store.get_session(sid)
    assert (row["status"], row["termination_reason"]) == ("culled", "older than 3600 s")
    (cp,) = await checkpoints(client)
    assert (cp["reason"], cp["session_id"]) == ("cull", sid)
    assert cp["created_at"] <= row["stopped_at"]
    assert (await client.get(cp["links"]["bundle"])).json() == {"period": 2.5}


# --- cull_exempt_groups ------------------------------------------------------------------------


async def test_members_of_exempt_groups_are_never_culled(make_hub):
    app, _ = await make_hub(
        SessionManager__idle_timeout=600,
        SessionManager__max_age=3600,
        SessionManager__cull_exempt_groups={"observers"},
    )
    manager = app.manager
    # users as JupyterHub reports them (auth mode hub is the source of groups)
    staff = User(user_id="ann", name="ann", groups=("students", "observers"))
    student = User(user_id="bob", name="bob", groups=("students",))
    kept = await manager.start_session(staff, {})
    culled = await manager.start_session(student, {})
    for s in (kept, culled):
        s.last_activity -= 7200  # idle past idle_timeout
        s.created_at -= 7200  # and older than max_age
    await manager.cull_idle()
    assert kept.status == "running" and kept.id in manager.sessions
    assert culled.status == "culled" and manager.sessions[culled.id] is culled
    assert (await app.store.get_session(culled.id))["status"] == "culled"
    bobs, _ = await app.checkpoints.list(student, session_id=None, limit=10, offset=0)
    assert [(r["reason"], r["session_id"]) for r in bobs] == [("cull", culled.id)]
    _, anns = await app.checkpoints.list(staff, session_id=None, limit=10, offset=0)
    assert anns == 0
    await manager.end_session(staff, kept.id)
    assert (await app.store.get_session(kept.id))["status"] == "stopped"


# --- failed_linger -------------------------------------------------------------------------------


async def test_failed_sessions_stay_listed_for_failed_linger_then_drop(make_hub):
    app, client = await make_hub(SessionManager__failed_linger=600)
    sid = await start(client)
    ended_by_owner = await start(client)
    for s in (sid, ended_by_owner):
        resp = await client.send(s, "crash", status=7)
        assert resp.status == 503, resp.body
    manager = app.manager
    await async_wait_for(
        lambda: all(manager.sessions[s].status == "failed" for s in (sid, ended_by_owner)),
        "both sessions to fail",
        timeout=10,
    )
    reason = "worker exited with status 7"
    listed = (await client.get("/dash/sessions")).json()
    assert (listed[sid]["status"], listed[sid]["reason"]) == ("failed", reason)
    # ... until its owner ends it
    assert (await client.post(f"/dash/end-session/{ended_by_owner}")).status == 200
    await async_wait_for(
        lambda: ended_by_owner not in manager.sessions, "the owner's session to be forgotten"
    )
    assert ended_by_owner not in (await client.get("/dash/sessions")).json()
    # ... or for failed_linger seconds after it failed
    failed = manager.sessions[sid]
    assert failed.ended_at is not None
    failed.ended_at = time.time() - 590
    await manager.poll_all()
    assert (await client.get("/dash/sessions")).json()[sid]["reason"] == reason
    resp = await client.send(sid, "ping")
    assert resp.status == 410 and resp.detail == f"Session {sid} has failed: {reason}"
    assert (resp.json()["reason"], resp.json()["checkpoint_id"]) == (reason, None)
    failed.ended_at = time.time() - 601
    await manager.poll_all()
    assert sid not in (await client.get("/dash/sessions")).json()
    assert (await client.send(sid, "ping")).status == 404
    row = await app.store.get_session(sid)  # the record stays
    assert (row["status"], row["termination_reason"]) == ("failed", reason)
