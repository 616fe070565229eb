"""cpu_isolation (on by default): per-session cgroups, ``cpu.idle`` during background
commands, and a hub that cannot build its tree starting without it.

Runs against the kernel's real cgroup ``cpu`` hierarchy; the tests that need a writable
one (root here, a delegated tree elsewhere) skip with the reason otherwise. The hub is
this test process: it moves into the tree's ``hub`` group and back at cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

import pytest

from phoebe_spawner.sessions.cpu import (
    START_WEIGHT,
    WEIGHT_FILE,
    WEIGHTS,
    CpuClasses,
    cpu_hierarchy,
)

from ..waiting import async_wait_for


def _writable_cpu_tree() -> str | None:
    """Why the tests cannot run here, or None."""
    where = cpu_hierarchy()
    if where is None:
        return "no cgroup 'cpu' controller for this process"
    mount, own, _ = where
    probe = mount / own.lstrip("/") / f"phoebe-spawner-probe-{os.getpid()}"
    try:
        probe.mkdir()
        has_idle = (probe / "cpu.idle").exists()
        probe.rmdir()
    except OSError as e:
        return f"the cgroup cpu tree is not writable here: {e}"
    return None if has_idle else "this kernel has no cpu.idle"


needs_cgroups = pytest.mark.skipif(bool(_writable_cpu_tree()), reason=str(_writable_cpu_tree()))


def cgroup_of(pid: int) -> str:
    """This pid's path in the cpu hierarchy (v1) or the unified one."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(",") or controllers == "":
            return path
    raise AssertionError("no cpu cgroup line")


def idle(group: Path) -> str:
    return (group / "cpu.idle").read_text().strip()


def off_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "phoebe_spawner.sessions.cpu" and "cpu isolation is off" in r.getMessage()
    ]


@needs_cgroups
async def test_workers_get_their_own_group_and_go_idle_in_background_commands(make_hub):
    home = cgroup_of(os.getpid())
    # no cpu_isolation setting: the default
    app, client = await make_hub(SessionManager__background_commands={"sleep"})
    tree = app.manager.cpu
    assert isinstance(tree, CpuClasses)
    assert cgroup_of(os.getpid()).endswith(f"/{tree.root.name}/hub")  # the hub itself
    default, _ = WEIGHTS[tree.version]

    def weight(group: Path) -> int:
        return int((group / WEIGHT_FILE[tree.version]).read_text())

    assert weight(tree.root / "hub") == default
    assert weight(tree.root) == 2 * default  # the hub and the fork server, as before

    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    session = app.manager.sessions[sid]
    group = tree.root / f"s-{sid}"
    pid = str(session.spawner.pid)
    await async_wait_for(
        lambda: group.is_dir() and pid in (group / "cgroup.procs").read_text(),
        "the worker in its own cpu group",
    )
    assert idle(group) == "0"

    # a background command: idle while it runs, back to normal after
    sleeping = asyncio.create_task(client.send(sid, "sleep", seconds=1.0))
    await async_wait_for(lambda: idle(group) == "1", "the group to go idle")
    assert weight(tree.root) == 2 * default  # a background command adds no weight
    assert (await sleeping).status == 200
    assert idle(group) == "0"
    assert weight(tree.root) == 2 * default
    assert weight(group) == default  # a normal group again
    # an interactive command leaves the class alone
    await client.send(sid, "echo", a=1)
    assert idle(group) == "0"

    assert (await client.post(f"/dash/end-session/{sid}")).status == 200
    await async_wait_for(lambda: not group.exists(), "the group to be removed")

    await app.cleanup()
    assert cgroup_of(os.getpid()) == home  # the hub went back
    assert not tree.root.exists()  # and left nothing behind


@needs_cgroups
async def test_the_hub_group_weighs_more_while_workers_start(make_hub, monkeypatch):
    """A starting worker waits in the ``hub`` group until it is connected: while starts
    are in flight that group weighs START_WEIGHT sessions for each, so a burst of starts
    is not one session's share against every session already running; at rest it weighs
    one again."""
    app, client = await make_hub()
    tree = app.manager.cpu
    assert isinstance(tree, CpuClasses)
    default, most = WEIGHTS[tree.version]

    def hub_weight() -> int:
        return int((tree.root / "hub" / WEIGHT_FILE[tree.version]).read_text())

    assert hub_weight() == default
    with tree.starting():
        assert hub_weight() == (1 + START_WEIGHT) * default
        with tree.starting():
            assert hub_weight() == (1 + 2 * START_WEIGHT) * default
        assert hub_weight() == (1 + START_WEIGHT) * default
    assert hub_weight() == default
    with contextlib.ExitStack() as burst:
        for _ in range(most // default):
            burst.enter_context(tree.starting())
        assert hub_weight() == most  # the kernel's maximum, not an error
    assert hub_weight() == default

    # the manager's starts: seen from inside the spawner's start
    seen: list[int] = []
    make_spawner = app.manager.make_spawner

    def observed(session_id, user):
        spawner = make_spawner(session_id, user)
        start = spawner.start

        async def start_and_look():
            seen.append(hub_weight())
            return await start()

        spawner.start = start_and_look
        return spawner

    monkeypatch.setattr(app.manager, "make_spawner", observed)
    replies = await asyncio.gather(*(client.post("/dash/start-session", {}) for _ in range(2)))
    assert [r.status for r in replies] == [200, 200]
    assert len(seen) == 2
    assert all(w >= (1 + START_WEIGHT) * default for w in seen), seen
    assert hub_weight() == default  # both started: back to rest
    for r in replies:
        assert (await client.post(f"/dash/end-session/{r.json()['session_id']}")).status == 200


@needs_cgroups
@pytest.mark.phoebe
async def test_the_default_hub_runs_a_forked_phoebe_compute_in_an_idle_group(make_hub):
    """The hub as shipped (the fork server, cpu_isolation and background_commands as they
    default): a PHOEBE worker gets its own group, idle while run_compute runs."""
    app, client = await make_hub(phoebe=True, PhoebeSpawnerApp__spawner_class="local-forkserver")
    tree = app.manager.cpu
    assert isinstance(tree, CpuClasses)
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    group = tree.root / f"s-{sid}"
    pid = str(app.manager.sessions[sid].spawner.local_pid())
    await async_wait_for(
        lambda: group.is_dir() and pid in (group / "cgroup.procs").read_text(),
        "the forked worker in its own cpu group",
    )
    times = [i / 3000 for i in range(3000)]  # a compute of a second or more
    reply = await client.send(sid, "add_dataset", kind="lc", compute_times=times)
    assert reply.json()["success"], reply.body
    assert idle(group) == "0"

    computing = asyncio.create_task(client.send(sid, "run_compute"))
    await async_wait_for(lambda: idle(group) == "1", "the group to go idle", interval=0.01)
    assert not computing.done()
    reply = await computing
    assert reply.json()["success"], reply.body[:300]
    assert idle(group) == "0"


@pytest.mark.parametrize("parent", ["plain-directory", "missing"])
async def test_a_hub_that_cannot_build_the_tree_starts_says_why_once_and_runs_sessions(
    make_hub, tmp_path, caplog, parent
):
    where = tmp_path / parent
    if parent == "plain-directory":
        where.mkdir()
    caplog.set_level(logging.INFO, logger="phoebe_spawner.sessions.cpu")
    app, client = await make_hub(SessionManager__cpu_cgroup_parent=str(where))
    assert app.manager.cpu is None
    [line] = off_lines(caplog)
    assert f"{where} is not a group of the cgroup cpu hierarchy" in line
    assert "commands share the CPU without priorities" in line
    if parent == "plain-directory":
        assert list(where.iterdir()) == []  # nothing written into it
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    assert (await client.send(sid, "sleep", seconds=0.1)).json()["success"]
    assert (await client.send(sid, "ping")).status == 200
    assert (await client.post(f"/dash/end-session/{sid}")).status == 200
    assert off_lines(caplog) == [line]  # and never again


async def test_cpu_isolation_false_builds_nothing_and_says_nothing(make_hub, caplog):
    caplog.set_level(logging.INFO, logger="phoebe_spawner.sessions.cpu")
    app, client = await make_hub(SessionManager__cpu_isolation=False)
    assert app.manager.cpu is None
    assert [r for r in caplog.records if r.name == "phoebe_spawner.sessions.cpu"] == []
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    assert (await client.send(sid, "ping")).status == 200
