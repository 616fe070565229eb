"""A Slurm worker is on another host: the hub neither dials it locally nor treats its
pid as a local process.

The private cluster (tests/slurm_cluster.py) gives its node a network of its own and
fails rather than quietly sharing the hub's; the node shares this machine's pid
namespace, which is exactly what makes a node pid dangerous: with ``cpu_isolation`` on,
a hub that took the worker's pid on its node for a local one would move whatever local
process has that number into the session's cgroup.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from phoebe_spawner.sessions.cpu import CpuClasses
from phoebe_spawner.spawners.slurm import SlurmSpawner

from ..slurm_cluster import IsolationFailed, SlurmCluster, isolation_unavailable, missing_programs
from .test_cpu_isolation import _writable_cpu_tree, cgroup_of
from .test_slurm import hub_config

pytestmark = pytest.mark.slurm


async def test_cpu_isolation_places_nothing_for_a_slurm_worker(make_hub, slurm_cluster):
    reason = _writable_cpu_tree()
    if reason:
        pytest.skip(f"cpu_isolation cannot run here: {reason}")
    app, client = await make_hub(
        **hub_config(
            slurm_cluster,
            SessionManager__cpu_isolation=True,
            SessionManager__background_commands={"sleep"},
        )
    )
    tree = app.manager.cpu
    assert isinstance(tree, CpuClasses)
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 200, resp.body
    sid = resp.json()["session_id"]
    spawner = app.manager.sessions[sid].spawner
    assert isinstance(spawner, SlurmSpawner)
    assert spawner.local_pid() is None
    assert spawner.node_pid is not None  # a real process of this machine's pid namespace
    # commands, a background one included (it marks the session's group idle if any)
    assert (await client.send(sid, "echo", a=1)).status == 200
    assert (await client.send(sid, "sleep", seconds=0.1)).status == 200

    group = tree.root / f"s-{sid}"
    procs = (group / "cgroup.procs").read_text().split() if group.exists() else []
    assert procs == []  # the hub placed nothing for this session
    # and the process whose number is the node pid stayed out of the hub's tree
    assert f"/{tree.root.name}/" not in cgroup_of(spawner.node_pid)
    assert (await client.post(f"/dash/end-session/{sid}")).status == 200


def test_the_cluster_fails_when_the_node_cannot_be_isolated():
    reason = isolation_unavailable()
    if reason:
        pytest.skip(f"network namespaces cannot be made here: {reason}")
    if missing_programs():
        pytest.skip(f"Slurm is not installed: {missing_programs()}")
    cluster = SlurmCluster()
    # names of its own: the session's cluster of this process uses the default ones
    tag = str(os.getpid() % 100000)
    cluster.netns = f"phoebe-slurm-taken-{tag}"
    cluster.veth_hub, cluster.veth_node = f"pth{tag}", f"ptn{tag}"
    subprocess.run(["ip", "netns", "add", cluster.netns], check=True, capture_output=True)
    try:
        with pytest.raises(IsolationFailed, match="ip netns add"):
            cluster.start()  # the namespace's name is taken: isolation fails
        assert not cluster.isolated and cluster.procs == {}  # no daemon was started
        assert cluster.hub_ip == cluster.node_ip == "127.0.0.1"  # and nothing claims it
    finally:
        subprocess.run(["ip", "netns", "del", cluster.netns], check=False, capture_output=True)
        shutil.rmtree(cluster.base, ignore_errors=True)
    assert not Path(f"/run/netns/{cluster.netns}").exists()
