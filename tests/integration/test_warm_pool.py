"""The warm pool (``SessionManager.warm_pool_size``): hand-out, refill, isolation, shutdown.

Runs with the plain local backend and with the fork server, with fast test sessions.
"""

from __future__ import annotations

import os
from typing import Any

import psutil
import pytest

from phoebe_spawner.sessions.pool import WarmPool

from ..conftest import Client, register
from ..waiting import async_wait_for

BACKENDS = {
    "local": {},
    "local-forkserver": {"PhoebeSpawnerApp__spawner_class": "local-forkserver"},
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request) -> dict[str, Any]:
    return dict(BACKENDS[request.param])


async def result(client: Client, sid: str, command: str, token: str, **kwargs: Any) -> Any:
    resp = (
        await client.send(sid, command, **kwargs)
        if token == ""
        else await client.post(f"/send/{sid}", {"command": command, **kwargs}, token=token)
    )
    assert resp.status == 200, resp.body
    body = resp.json()
    assert body["success"] is True, body
    return body["result"]


async def full(pool: WarmPool) -> None:
    """Return once every place in the pool holds a ready worker."""
    await async_wait_for(lambda: len(pool.ready) == pool.size, "the pool to fill", timeout=20)


def pool_pids(pool: WarmPool) -> list[int]:
    return [w.spawner.pid for w in pool.ready if w.spawner.pid]  # type: ignore[attr-defined]


async def test_start_takes_a_pool_worker_and_the_pool_refills(make_hub, backend):
    app, client = await make_hub(SessionManager__warm_pool_size=2, **backend)
    pool = app.manager.pool
    await full(pool)
    waiting = {w.session_id: w.spawner.pid for w in pool.ready}  # type: ignore[attr-defined]
    first = next(iter(waiting))
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    assert sid == first  # the oldest ready worker became the session
    assert app.manager.sessions[sid].spawner.pid == waiting[first]  # type: ignore[attr-defined]
    assert pool.handed_out == 1
    await full(pool)  # a replacement was started in the background
    assert sid not in {w.session_id for w in pool.ready}
    assert await result(client, sid, "ping", "") == {"status": "ready"}
    assert (await client.post(f"/dash/end-session/{sid}")).status == 200


async def test_pool_workers_carry_nothing_between_users(make_hub, backend):
    app, client = await make_hub(auth_mode="jwt", SessionManager__warm_pool_size=2, **backend)
    pool = app.manager.pool
    await full(pool)
    alice = await register(client, "alice@example.org")
    bob = await register(client, "bob@example.org")
    a = (await client.post("/dash/start-session", {}, token=alice)).json()["session_id"]
    await result(client, a, "set_value", alice, twig="secret", value="alice's")
    await result(client, a, "touch", alice, name="alice.txt")
    await full(pool)
    b = (await client.post("/dash/start-session", {}, token=bob)).json()["session_id"]
    assert pool.handed_out == 2
    where_a = await result(client, a, "whereami", alice)
    where_b = await result(client, b, "whereami", bob)
    sessions = app.manager.sessions
    assert where_a["cwd"] == app.manager.session_dir(sessions[a].user.user_id, a)
    assert where_b["cwd"] == app.manager.session_dir(sessions[b].user.user_id, b)
    assert where_a["files"] == ["alice.txt"] and where_b["files"] == []
    resp = await client.post(f"/send/{b}", {"command": "get_value", "twig": "secret"}, token=bob)
    assert resp.json()["success"] is False
    env_b = await result(client, b, "env", bob)
    assert not any("alice" in v for v in env_b.values())
    assert not any(a in v for v in env_b.values())
    # bob cannot reach alice's session, and alice's key is not bob's
    assert (await client.post(f"/send/{a}", {"command": "ping"}, token=bob)).status == 403
    assert sessions[a].spawner.key != sessions[b].spawner.key
    # the pool directory the workers started in is gone once they are handed out
    assert not any((pool.dir / sid).exists() for sid in (a, b))
    for token, sid in ((alice, a), (bob, b)):
        assert (await client.post(f"/dash/end-session/{sid}", token=token)).status == 200


async def test_a_handed_out_worker_takes_no_second_binding(make_hub):
    from phoebe_kernel_worker import protocol

    app, client = await make_hub(SessionManager__warm_pool_size=1)
    await full(app.manager.pool)
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    channel = app.manager.sessions[sid].channel
    assert channel is not None
    reply = await channel.control(protocol.BIND_REQUEST, {"session_dir": "/tmp"}, timeout=5)
    assert reply["bound"] is False
    assert (await result(client, sid, "whereami", ""))["cwd"] != "/tmp"
    await client.post(f"/dash/end-session/{sid}")


async def test_pool_counts_toward_capacity(make_hub):
    app, client = await make_hub(SessionManager__warm_pool_size=2, SessionManager__max_sessions=2)
    pool = app.manager.pool
    await full(pool)
    one = (await client.post("/dash/start-session", {})).json()["session_id"]
    two = (await client.post("/dash/start-session", {})).json()["session_id"]
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 429, resp.body
    # the hub is full with two sessions: the pool may not start a worker
    assert pool.count() == 0 and len(pool.ready) == 0
    await client.post(f"/dash/end-session/{one}")
    await async_wait_for(lambda: len(pool.ready) == 1, "the pool to refill", timeout=20)
    await client.post(f"/dash/end-session/{two}")


async def test_pool_workers_stop_at_shutdown_and_are_never_readopted(make_hub, tmp_path, backend):
    data = tmp_path / "shared"
    app1, client1 = await make_hub(
        data_dir=data,
        SessionManager__warm_pool_size=2,
        SessionManager__stop_workers_on_shutdown=False,
        **backend,
    )
    await full(app1.manager.pool)
    sid = (await client1.post("/dash/start-session", {})).json()["session_id"]
    await full(app1.manager.pool)
    pooled = pool_pids(app1.manager.pool)
    session_pid = app1.manager.sessions[sid].spawner.pid  # type: ignore[attr-defined]
    await app1.cleanup()
    assert all(not psutil.pid_exists(p) or _zombie(p) for p in pooled)  # always stopped
    assert psutil.pid_exists(session_pid)  # the user's session is left for re-adoption
    assert not list((data / "pool").glob("*.json"))
    app2, client2 = await make_hub(data_dir=data, **backend)
    assert set(app2.manager.sessions) == {sid}  # only the user's session comes back
    assert await result(client2, sid, "ping", "") == {"status": "ready"}
    await client2.post(f"/dash/end-session/{sid}")


async def test_pool_workers_a_crashed_hub_left_are_stopped(make_hub, tmp_path):
    data = tmp_path / "shared"
    app1, _ = await make_hub(data_dir=data, SessionManager__warm_pool_size=1)
    pool = app1.manager.pool
    await full(pool)
    (pid,) = pool_pids(pool)
    pool.ready.clear()  # as if the hub died: nobody stops this worker
    await app1.cleanup()
    assert psutil.pid_exists(pid) and list((data / "pool").glob("*.json"))
    app2, _ = await make_hub(data_dir=data)  # no pool configured now
    assert not psutil.pid_exists(pid) or _zombie(pid)
    assert app2.manager.sessions == {}
    assert not list((data / "pool").glob("*.json"))


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_without_a_pool_nothing_changes(make_hub):
    app, client = await make_hub()
    assert app.manager.pool.size == 0
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    assert app.manager.pool.count() == 0 and app.manager.pool.handed_out == 0
    assert not (app.manager.pool.dir).exists()
    assert os.path.isdir(app.manager.session_dir("anonymous", sid))
    await client.post(f"/dash/end-session/{sid}")
