"""Every row of the compatible API: success and each listed error, with real worker processes.

Workers here run the light test session (``phoebe_kernel_worker.testing``), which
starts in milliseconds; the PHOEBE flow itself is in ``test_phoebe_flow.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import time
from pathlib import Path

import psutil
import pytest

from ..conftest import JWT_SECRET, register
from ..sse import SSEStream
from ..waiting import async_wait_for


async def test_public_routes(make_hub):
    _, client = await make_hub()
    assert (await client.get("/health")).json() == {"status": "ok"}
    root = (await client.get("/")).json()
    assert root["service"] == "phoebe-spawner" and root["status"] == "running"
    assert isinstance(root["version"], str)
    assert (await client.get("/auth/config")).json() == {"mode": "none"}


async def test_unknown_path_and_method_are_json(make_hub):
    _, client = await make_hub()
    resp = await client.get("/no/such/thing")
    assert resp.status == 404 and "Not found" in resp.detail
    resp = await client.request("DELETE", "/health")
    assert resp.status == 405 and resp.json()["detail"]


async def test_auth_config_reports_mode(make_hub):
    _, client = await make_hub(auth_mode="jwt")
    assert (await client.get("/auth/config")).json() == {"mode": "jwt"}


# --- sessions -----------------------------------------------------------------------------------


async def test_start_list_end(make_hub):
    _, client = await make_hub()
    resp = await client.post("/dash/start-session", {"project_name": "Algol", "extra": [1, 2]})
    assert resp.status == 200
    s = resp.json()
    for key in (
        "session_id",
        "created_at",
        "last_activity",
        "mem_used",
        "port",
        "user_id",
        "full_name",
    ):
        assert key in s
    assert s["status"] == "running" and s["project_name"] == "Algol"
    assert isinstance(s["port"], int) and isinstance(s["last_activity"], float)
    listed = (await client.get("/dash/sessions")).json()
    assert list(listed) == [s["session_id"]]
    assert listed[s["session_id"]]["metadata"] == {"project_name": "Algol", "extra": [1, 2]}
    resp = await client.post(f"/dash/end-session/{s['session_id']}")
    assert resp.status == 200 and resp.json() == {"success": True}
    assert (await client.get("/dash/sessions")).json() == {}
    assert (await client.post(f"/dash/end-session/{s['session_id']}")).status == 404


@pytest.mark.parametrize("body", [b"", b"null", b"{}"])
async def test_start_session_with_empty_metadata(make_hub, body):
    _, client = await make_hub()
    resp = await client.post(
        "/dash/start-session", body=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 200 and resp.json()["project_name"] is None
    await client.post(f"/dash/end-session/{resp.json()['session_id']}")


@pytest.mark.parametrize(("body", "status"), [(b"[1, 2]", 400), (b"{not json", 400), (b'"x"', 400)])
async def test_start_session_bad_metadata(make_hub, body, status):
    _, client = await make_hub()
    resp = await client.post("/dash/start-session", body=body)
    assert resp.status == status and resp.detail


async def test_sessions_are_private(make_hub):
    _, client = await make_hub(auth_mode="jwt")
    alice = await register(client, "alice@example.org")
    bob = await register(client, "bob@example.org")
    sid = (await client.post("/dash/start-session", {}, token=alice)).json()["session_id"]
    assert (await client.get("/dash/sessions", token=bob)).json() == {}
    assert list((await client.get("/dash/sessions", token=alice)).json()) == [sid]
    for path in (f"/send/{sid}", f"/dash/end-session/{sid}", f"/dash/session-memory/{sid}"):
        resp = await client.post(path, {"command": "ping"}, token=bob)
        assert resp.status == 403, path
    assert (await client.get("/dash/session-memory", token=bob)).json() == {}
    resp = await client.post(f"/send/{sid}", {"command": "ping"}, token=alice)
    assert resp.json() == {"success": True, "result": {"status": "ready"}}
    assert (await client.post(f"/dash/end-session/{sid}", token=alice)).status == 200


async def test_unknown_session_is_404(make_hub):
    _, client = await make_hub()
    for path in ("/send/nope", "/dash/end-session/nope", "/dash/session-memory/nope"):
        resp = await client.post(path, {"command": "ping"})
        assert resp.status == 404 and "not found" in resp.detail, path


async def test_per_user_limit_holds_under_concurrency(make_hub):
    _, client = await make_hub(auth_mode="jwt", SessionManager__max_sessions_per_user=2)
    client.token = await register(client, "ada@example.org")
    results = await asyncio.gather(*(client.post("/dash/start-session", {}) for _ in range(5)))
    codes = sorted(r.status for r in results)
    assert codes == [200, 200, 429, 429, 429]
    assert "at most 2 per user" in next(r for r in results if r.status == 429).detail
    assert len((await client.get("/dash/sessions")).json()) == 2


async def test_default_per_user_limit_is_four(make_hub):
    _, client = await make_hub(auth_mode="jwt")
    ada = await register(client, "ada@example.org")
    bob = await register(client, "bob@example.org")
    for _ in range(4):
        assert (await client.post("/dash/start-session", {}, token=ada)).status == 200
    resp = await client.post("/dash/start-session", {}, token=ada)
    assert resp.status == 429 and resp.detail == "Session limit reached: at most 4 per user"
    assert (await client.post("/dash/start-session", {}, token=bob)).status == 200


async def test_admins_raise_the_limit_per_user(make_hub):
    _, client = await make_hub(
        auth_mode="jwt",
        SessionManager__max_sessions_per_user=1,
        SessionManager__user_session_limits={"ada@example.org": 3, "group:staff": 8},
    )
    ada = await register(client, "ada@example.org")
    bob = await register(client, "bob@example.org")
    for _ in range(3):
        assert (await client.post("/dash/start-session", {}, token=ada)).status == 200
    resp = await client.post("/dash/start-session", {}, token=ada)
    assert resp.status == 429 and "at most 3 per user" in resp.detail
    assert (await client.post("/dash/start-session", {}, token=bob)).status == 200
    resp = await client.post("/dash/start-session", {}, token=bob)
    assert resp.status == 429 and "at most 1 per user" in resp.detail


async def test_auth_mode_none_has_only_the_global_capacity(make_hub):
    """One person on their own machine: a parallel fit starting 16 sessions at once gets
    them all, under the default per-user limit and start rate."""
    app, client = await make_hub(
        SessionManager__start_rate_per_minute=30.0, SessionManager__max_sessions=16
    )
    assert app.manager.max_sessions_per_user == 4 and app.manager.start_burst == 10
    results = await asyncio.gather(*(client.post("/dash/start-session", {}) for _ in range(16)))
    assert [r.status for r in results] == [200] * 16, [r.body for r in results if r.status != 200]
    sids = [r.json()["session_id"] for r in results]
    replies = await asyncio.gather(*(client.send(sid, "ping") for sid in sids))
    assert all(r.json()["success"] for r in replies)
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 429 and resp.detail == "Capacity reached: 16 sessions are running"


async def test_capacity_limit(make_hub):
    _, client = await make_hub(auth_mode="jwt", SessionManager__max_sessions=1)
    a = await register(client, "a@example.org")
    b = await register(client, "b@example.org")
    assert (await client.post("/dash/start-session", {}, token=a)).status == 200
    resp = await client.post("/dash/start-session", {}, token=b)
    assert resp.status == 429 and "Capacity" in resp.detail
    status = (await client.get("/dash/port-status", token=b)).json()
    # b sees none of a's sessions, but that the hub has no slot left for a start
    assert (
        status["total_ports"] == 1
        and status["reserved_ports"] == 0
        and status["available_ports"] == 0
    )


async def test_worker_failing_to_start_is_503_with_reason(make_hub):
    _, client = await make_hub(LocalProcessSpawner__worker_extra={"fail_start": "no licence"})
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 503 and "no licence" in resp.detail
    sessions = (await client.get("/dash/sessions")).json()
    assert [s["status"] for s in sessions.values()] == ["failed"]
    # the failed session does not count against limits and can be dismissed
    sid = next(iter(sessions))
    assert (await client.post(f"/dash/end-session/{sid}")).status == 200


async def test_worker_start_timeout(make_hub):
    _, client = await make_hub(
        LocalProcessSpawner__worker_extra={"start_delay": 30},
        LocalProcessSpawner__start_timeout=0.5,
    )
    t0 = time.monotonic()
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 503 and "within 0.5 s" in resp.detail
    assert time.monotonic() - t0 < 10


async def test_port_status_shape(make_hub):
    _, client = await make_hub(LocalProcessSpawner__port_range=[41000, 41200])
    sid = (await client.post("/dash/start-session", {})).json()
    status = (await client.get("/dash/port-status")).json()
    assert set(status) == {
        "total_ports",
        "reserved_ports",
        "available_ports",
        "reserved_port_list",
        "port_range",
    }
    assert status["port_range"] == "41000-41199"
    assert status["reserved_port_list"] == [sid["port"]] and 41000 <= sid["port"] < 41200


async def test_port_status_shows_a_user_only_their_own_sessions(make_hub):
    from .test_admin import jwt_hub_with_admin

    base = free_port_block(30)
    _app, client, admin, ada = await jwt_hub_with_admin(
        make_hub, LocalProcessSpawner__port_range=[base, base + 30]
    )
    bob = await register(client, "bob@example.org")
    mine = [(await client.post("/dash/start-session", {}, token=ada)).json() for _ in range(2)]
    theirs = [(await client.post("/dash/start-session", {}, token=bob)).json() for _ in range(3)]
    status = (await client.get("/dash/port-status", token=ada)).json()
    assert status == {
        "total_ports": 4,  # ada's own limit
        "reserved_ports": 2,
        "available_ports": 2,
        "reserved_port_list": sorted(s["port"] for s in mine),
        "port_range": f"{base}-{base + 29}",
    }
    everything = (await client.get("/dash/port-status", token=admin)).json()
    assert everything == {
        "total_ports": 10,  # thirty ports, three per worker
        "reserved_ports": 5,
        "available_ports": 5,
        "reserved_port_list": sorted(s["port"] for s in mine + theirs),
        "port_range": f"{base}-{base + 29}",
    }
    assert (await client.get("/dash/port-status", token=None)).status == 401


async def test_session_memory(make_hub):
    _, client = await make_hub()
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    before = (await client.get("/dash/sessions")).json()[sid]["last_activity"]
    mem = (await client.get("/dash/session-memory")).json()
    assert set(mem) == {sid} and mem[sid] > 5
    one = (await client.post(f"/dash/session-memory/{sid}")).json()
    assert one["mem_used"] > 5
    # memory polls are not activity
    assert (await client.get("/dash/sessions")).json()[sid]["last_activity"] == before


# --- commands -------------------------------------------------------------------------------


async def test_send_success_and_command_errors(make_hub):
    _, client = await make_hub()
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    assert (await client.send(sid, "set_value", twig="period@binary", value=0.56)).json() == {
        "success": True,
        "result": {},
    }
    assert (await client.send(sid, "get_value", twig="period@binary")).json()["result"] == 0.56
    resp = await client.send(sid, "no_such_command")
    assert resp.status == 200 and resp.json() == {
        "success": False,
        "error": "API does not recognize command no_such_command.",
    }
    resp = await client.send(sid, "get_value", twig="missing")
    assert resp.status == 200 and resp.json()["success"] is False
    assert "traceback" not in resp.json()


async def test_traceback_only_in_debug(make_hub):
    _, client = await make_hub(PhoebeSpawnerApp__debug=True)
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    resp = await client.send(sid, "get_value", twig="missing")
    assert "Traceback" in resp.json()["traceback"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{bad", "Malformed JSON"),
        (b"[]", "JSON object"),
        (b'{"twig": 1}', "command"),
        (b"", "JSON"),
    ],
)
async def test_send_malformed(make_hub, body, fragment):
    _, client = await make_hub()
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    resp = await client.post(f"/send/{sid}", body=body)
    assert resp.status == 400 and fragment in resp.detail
    assert (await client.send(sid, "ping")).status == 200


async def test_send_oversize_is_413(make_hub):
    _, client = await make_hub(PhoebeSpawnerApp__max_body_size=1024 * 1024)
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    big = b'{"command": "echo", "x": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    resp = await client.post(f"/send/{sid}", body=big)
    assert resp.status == 413 and "exceeds the limit" in resp.detail
    assert (await client.send(sid, "ping")).status == 200


async def test_killed_worker_is_503_quickly(make_hub):
    app, client = await make_hub()
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    pid = app.manager.sessions[sid].spawner.pid
    os.kill(pid, signal.SIGKILL)
    await async_wait_for(
        lambda: app.manager.sessions[sid].status == "failed",
        "the killed worker's session to fail",
        timeout=3,
    )
    t0 = time.monotonic()
    resp = await client.send(sid, "ping")
    assert resp.status == 503 and "SIGKILL" in resp.detail
    assert time.monotonic() - t0 < 1
    listed = (await client.get("/dash/sessions")).json()[sid]
    assert listed["status"] == "failed" and "SIGKILL" in listed["reason"]
    row = await app.store.get_session(sid)
    assert row["status"] == "failed" and "SIGKILL" in row["termination_reason"]


async def test_worker_dying_mid_command_is_503(make_hub):
    _, client = await make_hub()
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    t0 = time.monotonic()
    resp = await client.send(sid, "crash", status=7)
    assert resp.status == 503 and "status 7" in resp.detail
    assert time.monotonic() - t0 < 3


async def test_timeout_is_504_and_session_survives(make_hub):
    _, client = await make_hub(SessionManager__command_timeouts={"sleep": 0.3})
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    t0 = time.monotonic()
    resp = await client.send(sid, "sleep", seconds=30)
    assert resp.status == 504 and "interrupted" in resp.detail
    assert time.monotonic() - t0 < 3
    resp = await client.send(sid, "echo", after="timeout")
    assert resp.json() == {"success": True, "result": {"after": "timeout"}}
    assert time.monotonic() - t0 < 5


async def test_hung_worker_is_stopped_after_grace(make_hub):
    app, client = await make_hub(
        SessionManager__command_timeouts={"hang": 0.3}, SessionManager__interrupt_grace=0.5
    )
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    assert (await client.send(sid, "hang")).status == 504
    await async_wait_for(
        lambda: app.manager.sessions[sid].status == "failed", "the hung session to fail", timeout=15
    )
    resp = await client.send(sid, "ping")
    assert resp.status == 503 and "hung" in resp.detail


async def test_commands_to_one_session_run_in_order(make_hub):
    _, client = await make_hub()
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    results = await asyncio.gather(
        client.send(sid, "sleep", seconds=0.3), *(client.send(sid, "echo", i=i) for i in range(5))
    )
    assert all(r.status == 200 and r.json()["success"] for r in results)


async def test_one_slow_session_does_not_delay_another(make_hub):
    _, client = await make_hub()
    slow = (await client.post("/dash/start-session", {})).json()["session_id"]
    fast = (await client.post("/dash/start-session", {})).json()["session_id"]
    busy = asyncio.ensure_future(client.send(slow, "sleep", seconds=2))
    await asyncio.sleep(0.1)
    t0 = time.monotonic()
    for _ in range(20):
        assert (await client.send(fast, "ping")).status == 200
    assert time.monotonic() - t0 < 1.5
    assert not busy.done()
    assert (await busy).status == 200


# --- culling, isolation, persistence ----------------------------------------------------------


async def test_idle_session_is_culled_but_busy_one_is_not(make_hub):
    app, client = await make_hub(
        SessionManager__idle_timeout=0.5, SessionManager__cull_interval=0.2
    )
    idle = (await client.post("/dash/start-session", {})).json()["session_id"]
    busy = (await client.post("/dash/start-session", {})).json()["session_id"]
    work = asyncio.ensure_future(client.send(busy, "sleep", seconds=2))
    await async_wait_for(
        lambda: idle not in app.manager.sessions, "the idle session to be culled", timeout=5
    )
    assert busy in app.manager.sessions
    assert (await work).status == 200
    row = await app.store.get_session(idle)
    assert row["status"] == "culled" and "idle" in row["termination_reason"]


async def test_worker_environment_and_key_stay_secret(make_hub, monkeypatch, tmp_path):
    monkeypatch.setenv("PHOEBE_SPAWNER_JWT_SECRET", JWT_SECRET)
    monkeypatch.setenv("PHOEBE_SPAWNER_DB_URL", "postgresql://user:pw@db/x")
    monkeypatch.setenv("SOME_TOKEN", "hub-only")
    app, client = await make_hub(
        auth_mode="jwt", PhoebeSpawnerApp__db_url=f"sqlite:///{tmp_path}/env.sqlite"
    )
    token = await register(client, "env@example.org")
    sid = (await client.post("/dash/start-session", {}, token=token)).json()["session_id"]
    env = (await client.post(f"/send/{sid}", {"command": "env"}, token=token)).json()["result"]
    assert not {"PHOEBE_SPAWNER_JWT_SECRET", "PHOEBE_SPAWNER_DB_URL", "SOME_TOKEN"} & set(env)
    spawner = app.manager.sessions[sid].spawner
    cmdline = " ".join(psutil.Process(spawner.pid).cmdline())
    assert spawner.key not in cmdline and spawner.key not in " ".join(env.values())
    mode = stat.S_IMODE(Path(spawner.connection_file).stat().st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(Path(spawner.runtime_dir).stat().st_mode) == 0o700


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
    assert (await client2.send(sid, "ping")).status == 503


async def test_locked_database_is_503_not_500(make_hub, tmp_path):
    import sqlite3

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
        assert health.json() == {"status": "degraded", "database": "unavailable"}
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

    async def samples() -> list:
        return await app.store.get_metrics(sid)

    deadline = time.monotonic() + 10
    while len(await samples()) < 2:
        assert time.monotonic() < deadline, "no memory samples recorded"
        await asyncio.sleep(0.1)
    rows = await samples()
    assert all(r["mem_used"] > 5 for r in rows)
    assert (await client.get("/dash/sessions")).json()[sid]["mem_used"] > 5


async def test_culling_understands_work(make_hub):
    app, client = await make_hub(
        SessionManager__idle_timeout=0.4,
        SessionManager__cull_interval=0.1,
        SessionManager__cull_exempt_users={"anonymous"},
    )
    exempt = (await client.post("/dash/start-session", {})).json()["session_id"]
    await asyncio.sleep(1.0)
    assert app.manager.sessions[exempt].status == "running"  # exempt user

    app2, client2 = await make_hub(
        SessionManager__idle_timeout=0.4, SessionManager__cull_interval=0.1
    )
    watched = (await client2.post("/dash/start-session", {})).json()["session_id"]
    stream = await SSEStream.open(client2.base_url, "/api/v1/events")  # a page is watching
    await asyncio.sleep(1.0)
    assert app2.manager.sessions[watched].status == "running"
    await stream.close()
    await async_wait_for(
        lambda: watched not in app2.manager.sessions, "the watched session to be culled", timeout=5
    )

    app3, client3 = await make_hub(SessionManager__max_age=0.5, SessionManager__cull_interval=0.1)
    busy = (await client3.post("/dash/start-session", {})).json()["session_id"]
    for _ in range(10):  # activity does not keep an old session alive
        await client3.send(busy, "ping")
        await asyncio.sleep(0.1)
    await async_wait_for(
        lambda: busy not in app3.manager.sessions, "the too old session to be culled", timeout=5
    )
    row = await app3.store.get_session(busy)
    assert row["status"] == "culled" and "older than" in row["termination_reason"]
    assert app.manager.sessions[exempt].status == "running"


async def test_session_starts_are_rate_limited_per_user(make_hub):
    _, client = await make_hub(
        auth_mode="jwt", SessionManager__start_rate_per_minute=1, SessionManager__start_burst=2
    )
    alice = await register(client, "alice@example.org")
    bob = await register(client, "bob@example.org")
    for _ in range(2):
        sid = (await client.post("/dash/start-session", {}, token=alice)).json()["session_id"]
        await client.post(f"/dash/end-session/{sid}", token=alice)
    resp = await client.post("/dash/start-session", {}, token=alice)
    assert resp.status == 429 and "Too many session starts" in resp.detail
    assert int(resp.headers["Retry-After"]) >= 1
    assert (await client.post("/dash/start-session", {}, token=bob)).status == 200


async def test_long_client_strings_stay_out_of_the_log(make_hub, caplog):
    _, client = await make_hub()
    long_id = "x" * 5000
    with caplog.at_level("INFO"):
        assert (await client.send(long_id, "ping")).status == 404
    assert caplog.records and max(len(r.getMessage()) for r in caplog.records) < 1000


def free_port_block(n: int) -> int:
    """The first port of ``n`` consecutive free ports, below the ephemeral range (so other
    programs' outgoing connections do not take them meanwhile)."""
    import random
    import socket

    for _ in range(200):
        base = random.randrange(20000, 30000 - n)
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


async def test_port_pool_exhaustion_is_429(make_hub):
    import socket

    base = free_port_block(6)
    _, client = await make_hub(LocalProcessSpawner__port_range=[base, base + 6])
    status = (await client.get("/dash/port-status")).json()
    assert status["total_ports"] == 2  # six ports, three per worker
    # a foreign process holds half of the pool: it is never taken for a worker
    squatters = []
    for port in (base, base + 1, base + 2):
        s = socket.socket()
        s.bind(("127.0.0.1", port))
        s.listen()
        squatters.append(s)
    try:
        first = await client.post("/dash/start-session", {})
        assert first.status == 200 and first.json()["port"] in range(base + 3, base + 6)
        resp = await client.post("/dash/start-session", {})
        assert resp.status == 429 and f"no free port in {base}-{base + 5}" in resp.detail
    finally:
        for s in squatters:
            s.close()
    assert (await client.post("/dash/start-session", {})).status == 200
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 429 and "Capacity reached: 2" in resp.detail
