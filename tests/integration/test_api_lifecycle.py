"""What happens to API sessions over time: culling (idle, busy, watched, too old), the
records kept of commands and transitions, a restarted hub re-adopting or failing its
workers, a locked database, and memory sampling; with real worker processes running the
light test session.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3

import psutil

from ..conftest import register
from ..sse import SSEStream
from ..waiting import async_wait_for


async def test_idle_session_is_culled_but_busy_one_is_not(make_hub):
    app, client = await make_hub(
        SessionManager__idle_timeout=0.5, SessionManager__cull_interval=0.2
    )
    idle = (await client.post("/dash/start-session", {})).json()["session_id"]
    busy = (await client.post("/dash/start-session", {})).json()["session_id"]
    work = asyncio.ensure_future(client.send(busy, "sleep", seconds=2))
    await async_wait_for(
        lambda: app.manager.sessions[idle].status == "culled",
        "the idle session to be culled",
        timeout=5,
    )
    assert busy in app.manager.sessions
    assert (await work).status == 200
    row = await app.store.get_session(idle)
    assert row["status"] == "culled" and "idle" in row["termination_reason"]


async def test_commands_and_transitions_are_recorded(make_hub):
    app, client = await make_hub()
    sid = (
        await client.post(
            "/dash/start-session", {"project_name": "p"}, headers={"User-Agent": "ua/1"}
        )
    ).json()["session_id"]
    await client.send(sid, "ping")
    await client.send(sid, "nope")
    await app.store.flush_commands()
    rows = await app.store.list_commands(sid)
    assert [(r["command"], r["success"]) for r in rows] == [("ping", True), ("nope", False)]
    row = await app.store.get_session(sid)
    assert row["status"] == "running" and row["project_name"] == "p" and row["user_agent"] == "ua/1"
    assert row["spawner_state"]["pid"] == app.manager.sessions[sid].spawner.pid
    await client.post(f"/dash/end-session/{sid}")
    await async_wait_for(lambda: sid not in app.manager.sessions, "the session to end")
    row = await app.store.get_session(sid)
    assert row["status"] == "stopped" and row["stopped_at"] and row["spawner_state"] == {}


async def test_restart_readopts_workers(make_hub, tmp_path):
    data = tmp_path / "shared"
    app1, client1 = await make_hub(data_dir=data, SessionManager__stop_workers_on_shutdown=False)
    sid = (await client1.post("/dash/start-session", {"project_name": "keep"})).json()["session_id"]
    await client1.send(sid, "set_value", twig="period@binary", value=2.5)
    pid = app1.manager.sessions[sid].spawner.pid
    await app1.cleanup()
    assert psutil.pid_exists(pid)
    _, client2 = await make_hub(data_dir=data)
    listed = (await client2.get("/dash/sessions")).json()
    assert listed[sid]["status"] == "running" and listed[sid]["project_name"] == "keep"
    assert (await client2.send(sid, "get_value", twig="period@binary")).json()["result"] == 2.5
    await client2.post(f"/dash/end-session/{sid}")
    await async_wait_for(lambda: not psutil.pid_exists(pid), "the worker to exit", timeout=5)


async def test_restart_marks_dead_workers_failed(make_hub, tmp_path):
    data = tmp_path / "shared"
    app1, client1 = await make_hub(data_dir=data, SessionManager__stop_workers_on_shutdown=False)
    sid = (await client1.post("/dash/start-session", {})).json()["session_id"]
    pid = app1.manager.sessions[sid].spawner.pid
    await app1.cleanup()
    os.kill(pid, signal.SIGKILL)
    _, client2 = await make_hub(data_dir=data)
    listed = (await client2.get("/dash/sessions")).json()
    assert listed[sid]["status"] == "failed" and "lost" in listed[sid]["reason"]
    assert (await client2.send(sid, "ping")).status == 410  # the hub ended it: gone


async def test_locked_database_is_503_not_500(make_hub, tmp_path):

    db = tmp_path / "locked.sqlite"
    app, client = await make_hub(
        auth_mode="jwt",
        PhoebeSpawnerApp__db_url=f"sqlite:///{db}",
        PhoebeSpawnerApp__db_busy_timeout=0.3,
    )
    token = await register(client, "before@example.org")
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        resp = await client.post(
            "/auth/register", {"email": "during@example.org", "password": "x" * 12}
        )
        assert resp.status == 503 and "Database unavailable" in resp.detail
        resp = await client.post("/dash/start-session", {}, token=token)
        assert resp.status == 503 and "Database unavailable" in resp.detail
        assert app.manager.active() == []
        health = await client.get("/health")
        assert health.status == 200
        assert health.json() == {
            "status": "degraded",
            "database": "unavailable",
            "features": ["frames"],
        }
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert (
        await client.post("/auth/register", {"email": "after@example.org", "password": "x" * 12})
    ).status == 200
    assert (await client.post("/dash/start-session", {}, token=token)).status == 200


async def test_memory_is_sampled_and_recorded(make_hub):
    app, client = await make_hub(SessionManager__memory_interval=0.2)
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]

    async def samples_if(n: int) -> list | None:
        """The recorded samples once there are ``n``."""
        rows = await app.store.get_metrics(sid)
        return rows if len(rows) >= n else None

    rows = await async_wait_for(
        lambda: samples_if(2), "two memory samples to be recorded", interval=0.1
    )
    assert all(r["mem_used"] > 5 for r in rows)
    assert (await client.get("/dash/sessions")).json()[sid]["mem_used"] > 5


async def test_culling_understands_work(make_hub):
    """Exempt users, a watching page and max_age, through the cull pass itself: the
    sessions' clocks are moved back instead of waiting (the loop's interval is an hour)."""
    app, client = await make_hub(
        SessionManager__idle_timeout=600,
        SessionManager__cull_interval=3600,
        SessionManager__cull_exempt_users={"anonymous"},
    )
    exempt = (await client.post("/dash/start-session", {})).json()["session_id"]
    app.manager.sessions[exempt].last_activity -= 7200
    await app.manager.cull_idle()
    assert app.manager.sessions[exempt].status == "running"  # exempt user

    app2, client2 = await make_hub(
        SessionManager__idle_timeout=600, SessionManager__cull_interval=3600
    )
    watched = (await client2.post("/dash/start-session", {})).json()["session_id"]
    stream = await SSEStream.open(client2.base_url, "/api/v1/events")  # a page is watching
    await async_wait_for(
        lambda: app2.manager.watchers["anonymous"] > 0, "the page's stream to be counted"
    )
    app2.manager.sessions[watched].last_activity -= 7200
    await app2.manager.cull_idle()
    assert app2.manager.sessions[watched].status == "running"
    await stream.close()
    await async_wait_for(
        lambda: app2.manager.watchers["anonymous"] == 0, "the page's stream to end"
    )
    await app2.manager.cull_idle()
    assert app2.manager.sessions[watched].status == "culled"
    row = await app2.store.get_session(watched)
    assert row["status"] == "culled" and row["termination_reason"].startswith("idle for ")

    app3, client3 = await make_hub(SessionManager__max_age=3600, SessionManager__cull_interval=3600)
    busy = (await client3.post("/dash/start-session", {})).json()["session_id"]
    app3.manager.sessions[busy].created_at -= 3601
    await client3.send(busy, "ping")  # activity does not keep an old session alive
    await app3.manager.cull_idle()
    assert app3.manager.sessions[busy].status == "culled"
    row = await app3.store.get_session(busy)
    assert row["status"] == "culled" and "older than" in row["termination_reason"]
    assert app.manager.sessions[exempt].status == "running"
