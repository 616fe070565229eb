"""cpu_isolation: per-session cgroups, ``cpu.idle`` during background commands.

Runs against the kernel's real cgroup ``cpu`` hierarchy; it needs write access to it
(root here, a delegated tree elsewhere) and skips with the reason otherwise. The hub is
this test process: it moves into the tree's ``hub`` group and back at cleanup.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from phoebe_spawner.sessions.cpu import CpuClasses, cpu_hierarchy

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


pytestmark = pytest.mark.skipif(bool(_writable_cpu_tree()), reason=str(_writable_cpu_tree()))


def cgroup_of(pid: int) -> str:
    """This pid's path in the cpu hierarchy (v1) or the unified one."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(",") or controllers == "":
            return path
    raise AssertionError("no cpu cgroup line")


async def test_workers_get_their_own_group_and_go_idle_in_background_commands(make_hub):
    home = cgroup_of(os.getpid())
    app, client = await make_hub(
        SessionManager__cpu_isolation=True, SessionManager__background_commands={"sleep"}
    )
    tree = app.manager.cpu
    assert isinstance(tree, CpuClasses)
    assert cgroup_of(os.getpid()).endswith(f"/{tree.root.name}/hub")  # the hub itself

    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    session = app.manager.sessions[sid]
    group = tree.root / f"s-{sid}"
    pid = str(session.spawner.pid)
    await async_wait_for(
        lambda: group.is_dir() and pid in (group / "cgroup.procs").read_text(),
        "the worker in its own cpu group",
    )
    assert (group / "cpu.idle").read_text().strip() == "0"

    # a background command: idle while it runs, back to normal after
    sleeping = asyncio.create_task(client.send(sid, "sleep", seconds=1.0))
    await async_wait_for(
        lambda: (group / "cpu.idle").read_text().strip() == "1", "the group to go idle"
    )
    assert (await sleeping).status == 200
    assert (group / "cpu.idle").read_text().strip() == "0"
    # an interactive command leaves the class alone
    await client.send(sid, "echo", a=1)
    assert (group / "cpu.idle").read_text().strip() == "0"

    assert (await client.post(f"/dash/end-session/{sid}")).status == 200
    await async_wait_for(lambda: not group.exists(), "the group to be removed")

    await app.cleanup()
    assert cgroup_of(os.getpid()) == home  # the hub went back
    assert not tree.root.exists()  # and left nothing behind


async def test_an_unusable_parent_turns_isolation_off_and_sessions_still_start(make_hub, tmp_path):
    app, client = await make_hub(
        SessionManager__cpu_isolation=True, SessionManager__cpu_cgroup_parent=str(tmp_path / "no")
    )
    assert app.manager.cpu is None
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    assert (await client.send(sid, "ping")).status == 200
