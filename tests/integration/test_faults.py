"""Fault injection with real worker processes: killed, stopped and racing workers, and a
database that is locked for a long time. Each test is bounded in time."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import sqlite3
import time
from typing import Any

import psutil

from phoebe_spawner.spawners.local import LocalProcessSpawner

from ..conftest import register
from ..waiting import async_wait_for


async def start(client, token=None) -> str:
    resp = await client.post("/dash/start-session", {}, token=token)
    assert resp.status == 200, resp.body
    return str(resp.json()["session_id"])


async def test_worker_killed_mid_job(make_hub):
    app, client = await make_hub()
    sid = await start(client)
    await client.send(sid, "set_value", twig="model", value="v1")
    cp = (await client.post(f"/api/v1/sessions/{sid}/checkpoints", {})).json()
    job = (
        await client.post(f"/api/v1/sessions/{sid}/jobs", {"command": "sleep", "seconds": 30})
    ).json()
    queued = (await client.post(f"/api/v1/sessions/{sid}/jobs", {"command": "echo"})).json()
    pid = app.manager.sessions[sid].spawner.pid

    async def running() -> bool:
        return bool((await client.get(job["links"]["self"])).json()["status"] == "running")

    await async_wait_for(running, "the job to run")  # killed mid-job, not before it starts
    os.kill(pid, signal.SIGKILL)
    for j in (job, queued):
        await async_wait_for(
            lambda j=j: app.jobs._finished.get(j["job_id"]) is not None,
            "the job to finish",
            timeout=5,
        )
    running = (await client.get(job["links"]["self"])).json()
    assert running["status"] == "failed" and "SIGKILL" in running["error"]
    assert (await client.get(queued["links"]["self"])).json()["status"] in ("failed", "cancelled")
    resp = await client.send(sid, "ping")
    assert resp.status == 410 and "SIGKILL" in resp.detail
    assert (await client.get("/dash/port-status")).json()["reserved_ports"] == 0
    restored = (
        await client.post("/dash/start-session", {"checkpoint_id": cp["checkpoint_id"]})
    ).json()
    value = await client.send(restored["session_id"], "get_value", twig="model")
    assert value.json()["result"] == "v1"


async def test_stopped_worker_times_out_then_is_failed_and_killed(make_hub):
    app, client = await make_hub(
        SessionManager__command_timeouts={"echo": 0.5}, SessionManager__interrupt_grace=0.5
    )
    sid = await start(client)
    other = await start(client)
    proc = psutil.Process(app.manager.sessions[sid].spawner.pid)
    proc.suspend()  # SIGSTOP
    try:
        assert (await client.send(sid, "echo", x=1)).status == 504  # a stopped worker never replies
        assert (await client.send(other, "echo", x=2)).json()["result"] == {"x": 2}  # isolation
        await async_wait_for(
            lambda: app.manager.sessions[sid].status == "failed",
            "the hung session to fail",
            timeout=30,
        )
        assert "hung" in app.manager.sessions[sid].reason
        await async_wait_for(
            lambda: not proc.is_running() or proc.status() == "zombie",
            "the hung worker to exit",
            timeout=15,
        )
    finally:
        if proc.is_running():
            proc.resume()
    assert (await client.send(sid, "ping")).status == 410


async def test_database_locked_for_fifteen_seconds(make_hub, tmp_path):
    db = tmp_path / "locked.sqlite"
    app, client = await make_hub(
        auth_mode="jwt",
        PhoebeSpawnerApp__db_url=f"sqlite:///{db}",
        PhoebeSpawnerApp__db_busy_timeout=0.5,
        JWTAuthenticator__user_cache_seconds=0.1,
    )
    token = await register(client, "during@example.org")
    sid = await start(client, token)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    statuses: set[int] = set()
    sent = 0
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            for resp in (
                await client.post("/dash/start-session", {}, token=token),
                await client.post(
                    "/auth/register", {"email": f"x{time.time()}@e.org", "password": "x" * 10}
                ),
            ):
                statuses.add(resp.status)
                assert resp.status == 503, resp.body  # never 401/409/500
            # reads, authentication and commands to running sessions go on
            assert (await client.get("/auth/me", token=token)).status == 200
            reply = await client.post(f"/send/{sid}", {"command": "echo", "n": 1}, token=token)
            assert reply.json() == {"success": True, "result": {"n": 1}}
            sent += 1
            health = (await client.get("/health")).json()
            assert health == {
                "status": "degraded",
                "database": "unavailable",
                "features": ["frames"],
            }
            await asyncio.sleep(0.5)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert statuses == {503}
    # recovered without a restart, and the commands sent meanwhile were not lost
    assert (await client.post("/dash/start-session", {}, token=token)).status == 200
    await app.store.flush_commands()
    logged = await app.store.list_commands(sid, limit=1000)
    assert sent >= 5 and sum(1 for r in logged if r["command"] == "echo") == sent


async def test_concurrent_stop_start_and_cull_stay_consistent(make_hub):
    app, client = await make_hub(
        SessionManager__idle_timeout=0.05, SessionManager__cull_interval=3600
    )
    rng = random.Random(20261122)
    others = {p.pid for p in psutil.Process().children(recursive=True)}  # e.g. a test database
    sids: list[str] = []
    codes: list[int] = []
    # the only 503s a race may cause: a command reaching a session its owner or the cull
    # is stopping. A worker that failed to start (or failed at all) is never one of them.
    lost_race = re.compile(r"ended by user|idle for \d+ s|Session [0-9a-f-]{36} is stopping")
    unavailable: list[tuple[str, str]] = []
    for _ in range(100):
        actions: list[tuple[str, Any]] = []
        for _ in range(rng.randint(2, 4)):
            choice = rng.random()
            if choice < 0.4 or not sids:
                actions.append(("start", client.post("/dash/start-session", {})))
            elif choice < 0.7:
                actions.append(("end", client.post(f"/dash/end-session/{rng.choice(sids)}")))
            elif choice < 0.85:
                actions.append(("ping", client.send(rng.choice(sids), "ping")))
            else:
                actions.append(("cull", app.manager.cull_idle()))
        results = await asyncio.gather(*(coro for _, coro in actions))
        for (kind, _), result in zip(actions, results, strict=True):
            if result is None:
                continue
            codes.append(result.status)
            body = result.json()
            if result.status == 503:
                unavailable.append((kind, body["detail"]))
            if result.status == 200 and "session_id" in body:
                sids.append(body["session_id"])
    assert all(code < 500 or code == 503 for code in codes), sorted(set(codes))
    wrong = [(kind, d) for kind, d in unavailable if kind != "ping" or not lost_race.fullmatch(d)]
    assert wrong == [], wrong
    assert 500 not in codes
    await asyncio.gather(
        *(client.post(f"/dash/end-session/{sid}") for sid in list(app.manager.sessions))
    )
    await async_wait_for(lambda: not app.manager.active(), "no session to be active", timeout=10)
    # memory, database and process table agree: nothing active anywhere
    rows = await app.store.list_sessions(statuses=("pending", "running", "stopping"))
    assert rows == []
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= others


class UnstoppableSpawner(LocalProcessSpawner):
    """A backend whose stop always fails (like an unreachable docker engine)."""

    async def stop(self, now: bool = False) -> None:
        raise RuntimeError("engine unreachable")


async def test_a_worker_that_cannot_be_stopped_ends_failed_not_stuck_stopping(make_hub):
    app, client = await make_hub(PhoebeSpawnerApp__spawner_class=f"{__name__}:UnstoppableSpawner")
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    spawner = app.manager.sessions[sid].spawner
    try:
        resp = await client.post(f"/dash/end-session/{sid}")
        assert resp.status == 200  # answered before the stop failed
        await async_wait_for(
            lambda: sid not in app.manager.sessions, "the session to end (not stuck stopping)"
        )
        row = await app.store.get_session(sid)
        assert row["status"] == "failed"
        assert "could not stop the worker: engine unreachable" in row["termination_reason"]
        assert row["spawner_state"]  # kept, so an operator can find the worker
        assert (await client.get("/dash/sessions")).json() == {}
    finally:
        await LocalProcessSpawner.stop(spawner, now=True)
