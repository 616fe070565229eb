"""End-session answers at once (issue 17): before the worker is gone, which keeps its slot.

``POST /dash/end-session/{id}`` and an admin's ``DELETE /api/v1/admin/sessions/{id}``
answer once the session is recorded ``stopping`` and its worker told to stop; the
worker's exit, the final status, the clean-up and the slot's release follow in a task
hub shutdown waits for. The slow worker is the test session factory's ``hang``: it
ignores the shutdown request, SIGINT and SIGTERM, so it is still there after the answer
for as long as the test wants, and goes when the test kills it (as the hub's SIGKILL
would a few seconds later).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from pathlib import Path
from typing import Any

import psutil
import pytest

from ..conftest import Client
from ..processes import gone, sigint_blocked
from ..waiting import async_wait_for

#: a hung worker outlives the hub's SIGINT and SIGTERM this long: only the test ends it
PATIENT = {"LocalProcessSpawner__interrupt_timeout": 60, "LocalProcessSpawner__term_timeout": 60}
BACKENDS = {"local": {}, "fork": {"PhoebeSpawnerApp__spawner_class": "local-forkserver"}}


async def start(client: Client) -> str:
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 200, resp.body
    sid: str = resp.json()["session_id"]
    return sid


def leftovers(app: Any, sid: str) -> list[Path]:
    """What of session ``sid`` is still on disk: its directory and cgroups."""
    paths = [Path(app.manager.session_dir("anonymous", sid))]  # the user of auth mode none
    paths += [
        tree.root / f"s-{sid}" for tree in (app.manager.limits.memory, app.manager.cpu) if tree
    ]
    return [p for p in paths if p.exists()]


@pytest.mark.parametrize(
    ("who", "backend"), [("owner", "local"), ("owner", "fork"), ("admin", "local")]
)
async def test_the_answer_comes_before_the_worker_exits_and_the_slot_waits_for_it(
    make_hub, who, backend
):
    app, client = await make_hub(SessionManager__max_sessions=1, **PATIENT, **BACKENDS[backend])
    sid = await start(client)
    s = app.manager.sessions[sid]
    proc = psutil.Process(s.spawner.pid)
    assert leftovers(app, sid) != []  # the session directory exists while it runs
    hung = asyncio.ensure_future(client.send(sid, "hang"))
    await async_wait_for(lambda: sigint_blocked(proc.pid), "the worker to hang", timeout=10)

    if who == "owner":
        resp = await client.post(f"/dash/end-session/{sid}")
    else:
        resp = await client.request("DELETE", f"/api/v1/admin/sessions/{sid}")
    assert resp.status == 200 and resp.json() == {"success": True}
    assert not gone(proc)  # answered while the worker is still there
    assert s.status == "stopping"
    assert (await app.store.get_session(sid))["status"] == "stopping"
    assert (await client.get("/dash/sessions")).json()[sid]["status"] == "stopping"
    # the running command ended with the channel; new ones see the session ending
    assert (await hung).status == 503
    # commands answer as they will once it has ended: the end-session has answered
    ping = await client.send(sid, "ping")
    if who == "owner":
        assert ping.status == 404 and ping.detail == f"Session {sid} not found"
    else:
        assert ping.status == 410
        assert ping.detail == f"Session {sid} was stopped: ended by admin anonymous"
    # a second end while it stops answers at once too
    assert (await client.post(f"/dash/end-session/{sid}")).status == 200
    # the slot is not free before the worker is gone
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 429 and "Capacity reached" in resp.detail
    assert (await client.get("/dash/port-status")).json()["available_ports"] == 0

    proc.send_signal(signal.SIGKILL)  # what the hub's escalation would end with
    await async_wait_for(lambda: s.status == "stopped", "the session to end", timeout=15)
    assert (await app.store.get_session(sid))["status"] == "stopped"
    await async_wait_for(lambda: not psutil.pid_exists(proc.pid), "the worker to be reaped")
    await async_wait_for(lambda: not leftovers(app, sid), "the directory and cgroups to go")
    if who == "owner":
        assert sid not in (await client.get("/dash/sessions")).json()
        assert (await client.send(sid, "ping")).status == 404
    else:
        assert (await client.send(sid, "ping")).json()["detail"] == ping.detail  # 410 as before
    new = await start(client)  # the slot is free again
    assert (await client.send(new, "ping")).json()["success"] is True


@pytest.mark.parametrize("backend", ["local", "fork"])
async def test_hub_shutdown_right_after_end_session_leaves_nothing(make_hub, tmp_path, backend):
    db = tmp_path / "hub.sqlite"
    app, client = await make_hub(PhoebeSpawnerApp__db_url=f"sqlite:///{db}", **BACKENDS[backend])
    sids = [await start(client), await start(client)]
    procs = [psutil.Process(app.manager.sessions[sid].spawner.pid) for sid in sids]
    trees = [t for t in (app.manager.limits.memory, app.manager.cpu) if t is not None]
    for sid in sids:
        assert (await client.post(f"/dash/end-session/{sid}")).status == 200
    assert {app.manager.sessions[sid].status for sid in sids} == {"stopping"}
    await app.cleanup()  # at once: the stops are still on their way
    assert all(gone(p) for p in procs)
    assert not any(leftovers(app, sid) for sid in sids)
    assert not any(t.root.exists() for t in trees)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT status FROM sessions").fetchall()
    assert rows == [("stopped",), ("stopped",)]
