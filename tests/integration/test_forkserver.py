"""The fork server backend (``spawner_class = "local-forkserver"``) through a real hub.

Fast test sessions forked from a template that loaded the test factory; real PHOEBE in
the tests marked ``phoebe``. The spawner contract itself is checked in
``test_spawner_contract.py`` (backend ``local-forkserver``).
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import numpy as np
import psutil
import pytest

from phoebe_spawner.spawners.forkserver import ForkServer, ForkServerSpawner

from ..conftest import Client
from ..processes import spares_of
from ..waiting import async_wait_for

FORK = {"PhoebeSpawnerApp__spawner_class": "local-forkserver"}


async def start(client: Client, **kw: Any) -> str:
    resp = await client.post("/dash/start-session", {}, **kw)
    assert resp.status == 200, resp.body
    sid: str = resp.json()["session_id"]
    return sid


async def result(client: Client, sid: str, command: str, **kwargs: Any) -> Any:
    resp = await client.send(sid, command, **kwargs)
    assert resp.status == 200, resp.body
    body = resp.json()
    assert body["success"] is True, body
    return body["result"]


def fork_server_of(app: Any) -> ForkServer:
    server = app.manager.backend
    assert isinstance(server, ForkServer) and server.proc is not None
    return server


@pytest.mark.parametrize("prefork", [0, 2])
async def test_workers_are_forked_from_the_template(make_hub, prefork):
    """Forked on demand (prefork 0) or taken from the spares forked ahead: the same worker."""
    app, client = await make_hub(**FORK, ForkServerSpawner__prefork=prefork)
    await async_wait_for(lambda: app.manager.backend.ready, "the template", timeout=30)
    server = fork_server_of(app)
    await async_wait_for(
        lambda: len(spares_of(server.proc.pid)) == prefork, f"{prefork} spares", timeout=30
    )
    a, b = await start(client), await start(client)
    wa, wb = await result(client, a, "whereami"), await result(client, b, "whereami")
    for sid, where in ((a, wa), (b, wb)):
        spawner = app.manager.sessions[sid].spawner
        assert isinstance(spawner, ForkServerSpawner) and spawner.child is not None
        assert spawner.child.spare is (prefork > 0)
        assert where["ppid"] == server.proc.pid  # forked, not cold-started by the hub
        assert where["pgid"] == where["sid"] == where["pid"]  # its own session and group
        assert where["cwd"] == app.manager.session_dir("anonymous", sid)
    assert wa["cwd"] != wb["cwd"]
    # reseeded: the children (two spares forked one after the other, or two children
    # forked on demand) do not repeat the template's random sequence
    ra, rb = await result(client, a, "random"), await result(client, b, "random")
    assert ra["random"] != rb["random"] and ra["numpy"] != rb["numpy"]
    # the key reached the worker through its 0600 file only
    env = await result(client, a, "env")
    key = app.manager.sessions[a].spawner.key
    assert key not in " ".join(env.values())
    assert key not in " ".join(psutil.Process(wa["pid"]).cmdline())
    await result(client, a, "set_value", twig="x", value=1)
    resp = await client.send(b, "get_value", twig="x")
    assert resp.json()["success"] is False  # the other session is untouched
    for sid in (a, b):
        assert (await client.post(f"/dash/end-session/{sid}")).status == 200
    await async_wait_for(lambda: not psutil.pid_exists(wa["pid"]), "the worker to exit", timeout=5)


async def test_a_killed_forked_worker_fails_its_session(make_hub):
    app, client = await make_hub(**FORK)
    sid = await start(client)
    pid = (await result(client, sid, "whereami"))["pid"]
    os.kill(pid, signal.SIGKILL)
    await async_wait_for(
        lambda: app.manager.sessions[sid].status == "failed", "the session to fail", timeout=10
    )
    assert app.manager.sessions[sid].reason == "worker was killed by SIGKILL"


async def test_memory_limit_applies_to_forked_workers(make_hub):
    _, client = await make_hub(
        **FORK, LocalProcessSpawner__mem_limit="1G", SessionLimits__memory_cgroup=False
    )
    sid = await start(client)
    resp = await client.send(sid, "allocate", mib=2048)
    assert resp.json()["success"] is False and resp.json()["error"].startswith(
        "out of memory (limit 1 GiB)"
    )
    assert (await result(client, sid, "ping")) == {"status": "ready"}
    await client.post(f"/dash/end-session/{sid}")


class Records(logging.Handler):
    """Keeps the hub log's records (the app's logger does not propagate to caplog)."""

    def __init__(self, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_fork_server_death_falls_back_to_cold_starts(make_hub):
    app, client = await make_hub(**FORK)
    survivor = await start(client)
    pid = (await result(client, survivor, "whereami"))["pid"]
    server = fork_server_of(app)
    os.kill(server.proc.pid, signal.SIGKILL)
    await async_wait_for(lambda: not server.alive, "the fork server to exit", timeout=10)
    await async_wait_for(lambda: server.error is not None, "the death to be logged", timeout=10)
    assert server.error == "the fork server exited with status -9"  # the one ERROR line
    records, level = Records(logging.INFO), app.log.level
    app.log.addHandler(records)
    app.log.setLevel(logging.INFO)
    try:
        cold = await start(client)
    finally:
        app.log.removeHandler(records)
        app.log.setLevel(level)
    # named at INFO: the fork server's death was already logged as an error
    assert [r.levelno for r in records.records if "cold-starting session" in r.getMessage()] == [
        logging.INFO
    ]
    where = await result(client, cold, "whereami")
    assert where["ppid"] == os.getpid()  # a plain child of the hub
    # the fork server's child lives on, still watched and stopped by the hub
    assert await result(client, survivor, "ping") == {"status": "ready"}
    spawner = app.manager.sessions[survivor].spawner
    assert isinstance(spawner, ForkServerSpawner) and spawner.child is not None
    assert spawner.child.lost and await spawner.poll() is None
    await client.post(f"/dash/end-session/{survivor}")
    await async_wait_for(lambda: not psutil.pid_exists(pid), "the worker to exit", timeout=5)
    await client.post(f"/dash/end-session/{cold}")


async def test_workers_die_with_the_fork_server_when_they_follow_the_hub(make_hub):
    app, client = await make_hub(**FORK, SessionManager__readopt_workers=False)
    sid = await start(client)
    pid = (await result(client, sid, "whereami"))["pid"]
    server = fork_server_of(app)
    os.kill(server.proc.pid, signal.SIGKILL)  # as when the hub itself dies
    await async_wait_for(lambda: not psutil.pid_exists(pid), "the worker to exit", timeout=10)
    await async_wait_for(
        lambda: app.manager.sessions[sid].status == "failed", "the session to fail", timeout=10
    )


async def test_restart_readopts_forked_workers(make_hub, tmp_path):
    data = tmp_path / "shared"
    app1, client1 = await make_hub(
        data_dir=data, SessionManager__stop_workers_on_shutdown=False, **FORK
    )
    sid = await start(client1)
    await result(client1, sid, "set_value", twig="period", value=2.5)
    pid = app1.manager.sessions[sid].spawner.pid
    await app1.cleanup()  # stops the fork server; the worker stays for re-adoption
    assert psutil.pid_exists(pid)
    app2, client2 = await make_hub(data_dir=data, **FORK)
    listed = (await client2.get("/dash/sessions")).json()
    assert listed[sid]["status"] == "running"
    assert await result(client2, sid, "get_value", twig="period") == 2.5
    assert app2.manager.sessions[sid].readopted
    await client2.post(f"/dash/end-session/{sid}")
    await async_wait_for(lambda: not psutil.pid_exists(pid), "the worker to exit", timeout=5)


async def test_fork_server_stops_with_the_hub(make_hub):
    app, client = await make_hub(**FORK)
    await start(client)
    server_pid = fork_server_of(app).proc.pid
    await app.cleanup()
    assert not psutil.pid_exists(server_pid) or (
        psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE
    )


# --- real PHOEBE ---------------------------------------------------------------------------

TIMES = [round(float(t), 4) for t in np.linspace(0, 1, 21)]


async def compute(client: Client, sid: str, token: str | None = None) -> list[float]:
    kw = {"token": token} if token else {}
    steps: list[dict[str, Any]] = [
        {"command": "set_value", "twig": "period@binary", "value": 0.56},
        {"command": "add_dataset", "kind": "lc", "compute_times": TIMES, "overwrite": True},
        {"command": "run_compute"},
    ]
    for step in steps:
        resp = await client.post(f"/send/{sid}", step, **kw)
        assert resp.status == 200 and resp.json()["success"], resp.body
    fluxes: list[float] = resp.json()["result"]["model"]["lc01"]["fluxes"]
    return fluxes


@pytest.mark.phoebe
async def test_phoebe_forked_session_equals_a_cold_one(make_hub):
    app, client = await make_hub(phoebe=True, **FORK)
    forked = await start(client)
    assert app.manager.sessions[forked].spawner.child is not None  # type: ignore[attr-defined]
    other = await start(client)
    forked_fluxes = await compute(client, forked)
    # the other forked session still has the template's default period
    resp = await client.send(other, "get_value", twig="period@binary")
    assert resp.json()["result"] == 1.0
    _, cold_client = await make_hub(phoebe=True)
    cold = await start(cold_client)
    cold_fluxes = await compute(cold_client, cold)
    assert np.array_equal(np.array(forked_fluxes), np.array(cold_fluxes))  # bit-equal
    for c, sid in ((client, forked), (client, other), (cold_client, cold)):
        assert (await c.post(f"/dash/end-session/{sid}")).status == 200
