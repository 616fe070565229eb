"""Death detection by event (phoebe_spawner/sessions/watch.py, ``Spawner.watch_exit``):
a worker that dies fails its session at once, with the reason the poll loop gives, on
``local`` (the child's exit; a pidfd for a re-adopted worker) and ``local-forkserver``
(the fork server's exit report; a pidfd once its connection is gone).

Every hub here has ``poll_interval`` = 3600 s unless a test needs the poll loop: its
first round would run an hour after start, so only the event path can see the death.
Workers are real processes, killed from outside.
"""

from __future__ import annotations

import errno
import os
import signal
from typing import Any

import psutil
import pytest

from phoebe_spawner.spawners.forkserver import ForkServer

from ..conftest import Client
from ..processes import gone
from ..waiting import async_wait_for

BACKENDS = ["local", "local-forkserver"]
NO_POLL = {"SessionManager__poll_interval": 3600.0}


async def start(client: Client) -> str:
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 200, resp.body
    sid: str = resp.json()["session_id"]
    return sid


async def failed_with(app: Any, client: Client, sid: str) -> str:
    """Wait until ``sid`` failed; its reason, as the API says it."""
    s = app.manager.sessions[sid]
    await async_wait_for(lambda: s.status == "failed", "the session to fail", timeout=15)
    listed = (await client.get("/dash/sessions")).json()[sid]
    assert listed["status"] == "failed"
    reason: str = listed["reason"]
    return reason


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_killed_worker_fails_its_session_without_the_poll_loop(make_hub, backend):
    app, client = await make_hub(PhoebeSpawnerApp__spawner_class=backend, **NO_POLL)
    sid, other = await start(client), await start(client)
    exits = app.manager.exits
    assert (exits.watched, exits.polled) == (2, [])
    os.kill(app.manager.sessions[sid].spawner.pid, signal.SIGKILL)
    assert await failed_with(app, client, sid) == "worker was killed by SIGKILL"
    resp = await client.send(sid, "ping")
    assert (
        resp.status == 410
        and resp.detail == f"Session {sid} has failed: worker was killed by SIGKILL"
    )
    assert (await client.send(other, "ping")).json()["result"] == {"status": "ready"}
    assert (exits.watched, exits.polled) == (1, [])  # the dead one's watch is gone
    assert (await client.post(f"/dash/end-session/{other}")).status == 200
    assert exits.watched == 0


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_readopted_workers_death_is_seen(make_hub, tmp_path, backend):
    data = tmp_path / "shared"
    config: dict[str, Any] = {"PhoebeSpawnerApp__spawner_class": backend}
    app1, client1 = await make_hub(
        data_dir=data, SessionManager__stop_workers_on_shutdown=False, **config
    )
    sid = await start(client1)
    proc = psutil.Process(app1.manager.sessions[sid].spawner.pid)
    await app1.cleanup()  # the worker is left running for re-adoption
    try:
        app2, client2 = await make_hub(data_dir=data, **config, **NO_POLL)
        s = app2.manager.sessions[sid]
        assert s.readopted and s.status == "running"
        assert (app2.manager.exits.watched, app2.manager.exits.polled) == (1, [])
        proc.kill()
        # not our child: its status is unknowable, so "1", as the poll loop said
        assert await failed_with(app2, client2, sid) == "worker exited with status 1"
    finally:
        if not gone(proc):
            proc.kill()


async def test_a_forked_worker_is_watched_by_pidfd_once_the_fork_server_is_gone(make_hub):
    app, client = await make_hub(PhoebeSpawnerApp__spawner_class="local-forkserver", **NO_POLL)
    sid = await start(client)
    spawner = app.manager.sessions[sid].spawner
    assert spawner.child is not None
    server = app.manager.backend
    assert isinstance(server, ForkServer) and server.proc is not None
    os.kill(server.proc.pid, signal.SIGKILL)  # its workers live on (they are re-adoptable)
    await async_wait_for(lambda: spawner.child.lost, "the fork server's connection to break")
    assert (await client.send(sid, "ping")).json()["result"] == {"status": "ready"}
    assert app.manager.exits.polled == []  # watched by pidfd now, not polled
    os.kill(spawner.pid, signal.SIGKILL)
    assert await failed_with(app, client, sid) == "worker exited with status 1"


async def test_without_pidfds_a_readopted_worker_is_polled(make_hub, tmp_path, monkeypatch):
    data = tmp_path / "shared"
    app1, client1 = await make_hub(
        data_dir=data,
        PhoebeSpawnerApp__spawner_class="local",
        SessionManager__stop_workers_on_shutdown=False,
    )
    sid = await start(client1)
    proc = psutil.Process(app1.manager.sessions[sid].spawner.pid)
    await app1.cleanup()

    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "pidfd_open is not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    try:
        app2, client2 = await make_hub(
            data_dir=data,
            PhoebeSpawnerApp__spawner_class="local",
            SessionManager__poll_interval=0.1,
        )
        s = app2.manager.sessions[sid]
        assert app2.manager.exits.polled == [s] and app2.manager.exits.watched == 0
        proc.kill()
        assert await failed_with(app2, client2, sid) == "worker exited with status 1"
        assert app2.manager.exits.polled == []
    finally:
        if not gone(proc):
            proc.kill()
