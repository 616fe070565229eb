"""The compatible API's sessions: the first routes a client sees, starting, listing and
ending sessions, their limits, ports and rate, and what a worker is kept from seeing; each
success and each listed error, with real worker processes.

Workers here run the light test session (``phoebe_kernel_worker.testing``), which starts in
milliseconds. Commands sent to sessions are in ``test_api_commands.py``; culling, restarts,
records and memory sampling in ``test_api_lifecycle.py``; the PHOEBE flow itself in
``test_phoebe_flow.py``.
"""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import psutil
import pytest

from ..conftest import JWT_SECRET, Client, register
from ..waiting import async_wait_for


async def test_public_routes(make_hub):
    _, client = await make_hub()
    assert (await client.get("/health")).json() == {"status": "ok", "features": ["frames"]}
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
    # listed "stopping" until its worker is gone (the answer does not wait for that)
    await async_wait_for(lambda: _listed(client), "the ended session to leave the list", timeout=10)
    assert (await client.post(f"/dash/end-session/{s['session_id']}")).status == 404


async def _listed(client: Client) -> bool:
    return (await client.get("/dash/sessions")).json() == {}


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
    resp = await client.post("/dash/start-session", {})  # the worker would be ready in 30 s
    assert resp.status == 503 and "within 0.5 s" in resp.detail
    [listed] = (await client.get("/dash/sessions")).json().values()
    assert listed["status"] == "failed" and "within 0.5 s" in listed["reason"]


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
