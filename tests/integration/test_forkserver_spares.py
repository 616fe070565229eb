"""The fork server's spares (``c.ForkServerSpawner.prefork``) through a real hub.

A spare is a child forked ahead that waits for a request (docs/performance.md, "Fork
server"): a burst of starts takes the waiting spares first, the fork server forks new
ones once no request is waiting, a spare that dies is reaped and replaced, and every
spare dies with the template. Spares belong to no session and hold no descriptor of the
hub. The template reads requests without blocking its loop: one that arrives slowly holds
up no other, and one that never completes is refused after its deadline. Fast test
sessions; the reseed and the wall with spares are checked in
``test_forkserver.py`` and ``test_wall.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import orjson
import psutil

from phoebe_spawner.spawners.forkserver import ForkServer, ForkServerSpawner

from ..conftest import Client
from ..processes import gone, spares_of
from ..waiting import async_wait_for

FORK = {"PhoebeSpawnerApp__spawner_class": "local-forkserver"}


def template_of(app: Any) -> int:
    server = app.manager.backend
    assert isinstance(server, ForkServer) and server.proc is not None
    return server.proc.pid


async def wait_spares(app: Any, count: int, not_in: set[int] = frozenset()) -> list[int]:
    """Wait until the template has ``count`` spares, none of them in ``not_in``."""
    await async_wait_for(lambda: app.manager.backend.ready, "the template", timeout=30)
    template = template_of(app)

    def ready() -> list[int]:
        pids = sorted(p.pid for p in spares_of(template))
        return pids if len(pids) == count and not set(pids) & not_in else []

    pids: list[int] = await async_wait_for(ready, f"{count} spares", timeout=30)
    return pids


async def start(client: Client) -> str:
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 200, resp.body
    sid: str = resp.json()["session_id"]
    return sid


def open_fds(pid: int) -> dict[str, str]:
    """What each of the process's descriptors points to."""
    return {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}


async def test_a_burst_takes_the_spares_and_they_are_refilled(make_hub):
    app, client = await make_hub(**FORK, ForkServerSpawner__prefork=3)
    first = await wait_spares(app, 3)
    assert app.manager.sessions == {}  # spares are no sessions
    log = os.readlink(f"/proc/{template_of(app)}/fd/1")
    for pid in first:  # stdio and their socketpair to the template: nothing of the hub's
        fds = open_fds(pid)
        assert (fds.pop("0"), fds.pop("1"), fds.pop("2")) == (os.devnull, log, log)
        assert len(fds) == 1 and next(iter(fds.values())).startswith("socket:"), fds
        assert psutil.Process(pid).num_threads() == 1
    sids = await asyncio.gather(*(start(client) for _ in range(4)))
    children = {}
    for sid in sids:
        spawner = app.manager.sessions[sid].spawner
        assert isinstance(spawner, ForkServerSpawner) and spawner.child is not None
        children[spawner.child.pid] = spawner.child.spare
    # the three waiting spares took the first three requests (no refill while requests wait)
    assert set(first) <= {pid for pid, spare in children.items() if spare}
    for sid in sids:
        resp = await client.send(sid, "whereami")
        where = resp.json()["result"]
        assert where["ppid"] == template_of(app) and where["pgid"] == where["pid"]
        assert psutil.Process(where["pid"]).name() != "phoebe-spare"  # its name given back
    refilled = await wait_spares(app, 3, not_in=set(children))
    assert len(refilled) == 3
    for sid in sids:
        assert (await client.post(f"/dash/end-session/{sid}")).status == 200
    procs = [psutil.Process(pid) for pid in refilled]
    await app.cleanup()  # the template ends and reaps its spares before it exits
    for proc in procs:
        assert not psutil.pid_exists(proc.pid) or gone(proc)


async def test_spares_die_with_the_template(make_hub):
    app, _ = await make_hub(**FORK, ForkServerSpawner__prefork=2)
    procs = [psutil.Process(pid) for pid in await wait_spares(app, 2)]
    os.kill(template_of(app), signal.SIGKILL)
    for proc in procs:
        await async_wait_for(lambda p=proc: gone(p), f"spare {proc.pid} to die", timeout=10)


async def test_a_dead_spare_is_reaped_and_replaced(make_hub):
    app, client = await make_hub(**FORK, ForkServerSpawner__prefork=2)
    victim, survivor = await wait_spares(app, 2)
    os.kill(victim, signal.SIGKILL)
    # reaped by the template (no zombie left), then a new spare takes its place
    await async_wait_for(lambda: not psutil.pid_exists(victim), "the spare to be reaped")
    pids = await wait_spares(app, 2, not_in={victim})
    assert survivor in pids
    sid = await start(client)  # the oldest spare takes it
    spawner = app.manager.sessions[sid].spawner
    assert isinstance(spawner, ForkServerSpawner) and spawner.child is not None
    assert spawner.child.spare and spawner.child.pid == survivor
    assert (await client.post(f"/dash/end-session/{sid}")).status == 200


async def test_a_slow_request_holds_up_no_other(make_hub):
    app, client = await make_hub(**FORK, ForkServerSpawner__prefork=1)
    await wait_spares(app, 1)
    path = app.manager.backend.socket_path
    slow_reader, slow = await asyncio.open_unix_connection(path)
    stuck_reader, stuck = await asyncio.open_unix_connection(path)
    for writer in (slow, stuck):  # the hub (this process) connects: half a request each
        writer.write(b'{"connection_file": ')
        await writer.drain()
    sid = await start(client)  # served while both are still arriving
    slow.write(b"1}\n")  # now whole, and refused for what it says, not for its lateness
    await slow.drain()
    reply = orjson.loads(await asyncio.wait_for(slow_reader.readline(), 10))
    assert reply == {"error": "a request is an object with a 'connection_file'"}
    reply = orjson.loads(await asyncio.wait_for(stuck_reader.readline(), 30))
    assert reply == {"error": "the request did not arrive within 5 s"}
    for writer in (slow, stuck):
        writer.close()
    assert (await client.post(f"/dash/end-session/{sid}")).status == 200
