"""The Slurm backend on a real (private, single-node) Slurm cluster, through the hub.

The cluster (tests/slurm_cluster.py) runs its node in its own network namespace, so
workers bind on the node's address and register over the veth link, as on a real
cluster. The light test worker is used everywhere except the one real PHOEBE flow.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from phoebe_kernel_worker import protocol
from phoebe_spawner.spawners.base import SpawnError
from phoebe_spawner.spawners.slurm import SlurmSpawner
from phoebe_spawner.spawners.slurm.commands import SlurmCommands, SlurmError, SlurmUnavailable

from ..conftest import TEST_FACTORY
from ..waiting import async_wait_for

pytestmark = pytest.mark.slurm

HEX_SECRET = re.compile(r"[0-9a-f]{64}")


def hub_config(cluster: Any, **overrides: Any) -> dict[str, Any]:
    """make_hub overrides for a hub whose sessions are jobs of ``cluster``."""
    return {
        "PhoebeSpawnerApp__spawner_class": "slurm",
        "SlurmSpawner__slurm_conf": str(cluster.conf),
        "SlurmSpawner__registration_ip": cluster.hub_ip,
        "SlurmSpawner__worker_args": TEST_FACTORY,
        "SlurmSpawner__job_poll_interval": 0.2,
        "SlurmSpawner__state_cache_seconds": 0.2,
        "SlurmSpawner__start_timeout": 60.0,
        # the private node has 4 GiB: the default 4 GiB per session would fill it
        "SlurmSpawner__mem_limit": "1G",
        **overrides,
    }


def job_state(cluster: Any, job_id: str) -> str:
    out = cluster.run("scontrol", "show", "job", "-o", job_id, check=False)
    match = re.search(r"JobState=(\S+)", out)
    return match.group(1) if match else "PURGED"


def in_queue(cluster: Any, job_id: str) -> bool:
    return any(line.split()[0] == job_id for line in cluster.queue())


async def session_of(client: Any, sid: str) -> dict[str, Any]:
    listed: dict[str, Any] = (await client.get("/dash/sessions")).json()
    return listed[sid]


@pytest.mark.phoebe
async def test_phoebe_session_runs_as_a_slurm_job(make_hub, slurm_cluster):
    app, client = await make_hub(
        phoebe=True,
        **hub_config(
            slurm_cluster,
            SlurmSpawner__worker_args=[],
            SlurmSpawner__start_timeout=180.0,
            SlurmSpawner__encrypt=True,
        ),
    )
    started = time.perf_counter()
    resp = await client.post("/dash/start-session", {"project_name": "on the cluster"})
    assert resp.status == 200, resp.body
    latency = time.perf_counter() - started
    sid = resp.json()["session_id"]
    spawner = app.manager.sessions[sid].spawner
    assert isinstance(spawner, SlurmSpawner) and spawner.node == "node1"
    assert in_queue(slurm_cluster, spawner.job_id)
    assert spawner.endpoint is not None and spawner.local_pid() is None  # not a local process
    host = spawner.endpoint.shell.removeprefix("tcp://").rsplit(":", 1)[0]
    # bound on the node, reached over the network (the fixture fails if it is not isolated)
    assert slurm_cluster.isolated and host == slurm_cluster.node_ip != slurm_cluster.hub_ip
    assert spawner.endpoint.curve_server_key  # the channels are encrypted

    async def send(command: str, **kwargs: Any) -> Any:
        r = await client.post(f"/send/{sid}", {"command": command, **kwargs}, timeout=300)
        assert r.status == 200, r.body
        assert r.json()["success"] is True, r.body
        return r.json()["result"]

    assert await send("set_value", twig="period@binary", value=0.56) == {}
    assert await send("get_value", twig="period@binary") == 0.56
    times = [0.0, 0.25, 0.5, 0.75, 1.0]
    await send("add_dataset", kind="lc", compute_times=times, overwrite=True)
    model = (await send("run_compute"))["model"]
    assert model["lc01"]["times"] == times and all(f > 0 for f in model["lc01"]["fluxes"])

    job_id = spawner.job_id
    assert (await client.post(f"/dash/end-session/{sid}")).status == 200
    await async_wait_for(lambda: not app.manager.active(), "the end to finish", timeout=60)
    assert not in_queue(slurm_cluster, job_id)
    assert job_state(slurm_cluster, job_id) == "COMPLETED", slurm_cluster.run(
        "scontrol", "show", "job", job_id
    )  # shut down, not killed
    print(f"PHOEBE session ready through Slurm in {latency:.2f} s")


async def test_secrets_stay_out_of_slurm_and_the_job(make_hub, slurm_cluster, monkeypatch):
    monkeypatch.setenv("PHOEBE_SPAWNER_SECRET", "ab" * 32)  # a hub secret in the hub's env
    app, client = await make_hub(**hub_config(slurm_cluster, SlurmSpawner__encrypt=True))
    started = time.perf_counter()
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    latency = time.perf_counter() - started
    spawner = app.manager.sessions[sid].spawner
    assert isinstance(spawner, SlurmSpawner) and spawner.job_id and spawner.node_pid
    key = spawner.key
    curve_secret = protocol.derive_curve_secret(key.encode())
    secrets = [key, curve_secret, "ab" * 32]

    # what Slurm shows about the job, to its owner and to admins
    seen = {
        "squeue": slurm_cluster.run("squeue", "-j", spawner.job_id, "-o", "%all"),
        "scontrol": slurm_cluster.run("scontrol", "-dd", "show", "job", spawner.job_id),
        "script": slurm_cluster.run("scontrol", "write", "batch_script", spawner.job_id, "-"),
    }
    assert "exec " in seen["script"]
    assert "-m phoebe_kernel_worker.node_agent " in seen["script"]
    # the job's processes: command lines and environments
    worker = psutil.Process(spawner.node_pid)
    for proc in (worker, worker.parent()):
        assert proc is not None
        seen[f"cmdline {proc.pid}"] = " ".join(proc.cmdline())
        seen[f"environ {proc.pid}"] = Path(f"/proc/{proc.pid}/environ").read_text(errors="replace")
    env = (await client.send(sid, "env")).json()["result"]
    seen["worker env"] = " ".join(f"{k}={v}" for k, v in env.items())
    for where, text in seen.items():
        for secret in secrets:
            assert secret not in text, f"a secret shows in {where}"
        # the registration token is 64 hex characters too: nothing of that shape at all
        assert not HEX_SECRET.search(text), f"a hex secret shows in {where}"
    assert not any(k.startswith("PHOEBE_SPAWNER_") for k in env)
    # the shared connection file is gone once the job started; the worker's copy is private
    assert not (Path(spawner.runtime_dir) / "connection.json").exists()
    args = worker.cmdline()
    private = Path(args[args.index("--connection-file") + 1])
    assert private.stat().st_mode & 0o777 == 0o600
    assert private.parent.stat().st_mode & 0o777 == 0o700
    await client.post(f"/dash/end-session/{sid}")
    print(f"test worker ready through Slurm in {latency:.2f} s")


async def test_scancel_behind_the_hubs_back_fails_the_session(make_hub, slurm_cluster):
    app, client = await make_hub(**hub_config(slurm_cluster))
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    job_id = app.manager.sessions[sid].spawner.job_id
    assert (await client.send(sid, "ping")).status == 200
    slurm_cluster.run("scancel", job_id)
    await async_wait_for(
        lambda: (
            app.manager.sessions.get(sid) is None or app.manager.sessions[sid].status == "failed"
        ),
        "the session to fail or be removed",
        timeout=30,
    )
    session = await session_of(client, sid)
    assert session["status"] == "failed"
    assert f"Slurm job {job_id} was cancelled" in session["reason"]
    assert "CANCELLED" in session["reason"]
    assert (await client.send(sid, "ping")).status == 410
    row = await app.store.get_session(sid)
    assert row["status"] == "failed" and "CANCELLED" in row["termination_reason"]


async def test_time_limit_fails_the_session_with_slurms_reason(make_hub, slurm_cluster):
    app, client = await make_hub(**hub_config(slurm_cluster, SlurmSpawner__time_limit="1"))
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    job_id = app.manager.sessions[sid].spawner.job_id
    assert (await client.send(sid, "set_value", twig="x", value=1)).status == 200
    # Slurm enforces limits on its own schedule (about every 30 s), so this takes 60-95 s
    await async_wait_for(
        lambda: (
            app.manager.sessions.get(sid) is None or app.manager.sessions[sid].status == "failed"
        ),
        "the session to fail or be removed",
        timeout=150,
        interval=0.5,
    )
    session = await session_of(client, sid)
    assert session["status"] == "failed"
    assert f"Slurm job {job_id} reached its time limit (TIMEOUT" in session["reason"]
    assert "limit 00:01:00" in session["reason"]
    assert not in_queue(slurm_cluster, job_id)


async def test_queue_state_is_reported_while_the_node_is_busy(slurm_cluster, tmp_path):
    filler = slurm_cluster.run(
        "sbatch", "--parsable", "-J", "filler", "-c", "2", "--mem=64M", "-o", "/dev/null",
        "--wrap", "exec sleep 300",
    ).strip()  # fmt: skip
    spawner = SlurmSpawner(
        session_id="queued",
        key=protocol.derive_session_key(b"queue-secret", "queued").decode(),
        session_dir=str(tmp_path / "session"),
        runtime_dir=str(tmp_path / "runtime"),
        worker_args=TEST_FACTORY,
        slurm_conf=str(slurm_cluster.conf),
        registration_ip=slurm_cluster.hub_ip,
        job_poll_interval=0.2,
        cpu_limit=1.0,
        mem_limit="256M",
    )
    try:
        await async_wait_for(
            lambda: asyncio.to_thread(lambda: job_state(slurm_cluster, filler) == "RUNNING"),
            "the filler job to run",
            timeout=30,
            interval=0.2,
        )
        start = asyncio.ensure_future(spawner.start())
        events: list[dict[str, Any]] = []

        async def collect() -> None:
            async for event in spawner.progress():
                events.append(event)

        collector = asyncio.ensure_future(collect())
        await async_wait_for(
            lambda: any("pending (Resources)" in e["message"] for e in events),
            "a 'pending (Resources)' start event",
            timeout=30,
        )
        assert await spawner.poll() is None  # starting counts as running
        assert not start.done()
        info = slurm_cluster.run("scontrol", "show", "job", "-o", spawner.job_id or "")
        assert "NumCPUs=1 " in info and "MinMemoryNode=256M" in info  # the limits, in Slurm
        slurm_cluster.run("scancel", filler)
        endpoint = await asyncio.wait_for(start, 60)
        await asyncio.wait_for(collector, 5)
        assert endpoint == spawner.endpoint and endpoint.shell.startswith("tcp://")
        messages = [e["message"] for e in events]
        pending = messages.index(f"Slurm job {spawner.job_id} is pending (Resources)")
        running = messages.index(f"Slurm job {spawner.job_id} is running on node1")
        assert pending < running < len(messages) - 1
        assert events[-1] == {"progress": 100, "message": "Worker ready on node1"}
    finally:
        slurm_cluster.run("scancel", filler, check=False)
        await spawner.stop()
        spawner.clear_state()
    await async_wait_for(
        lambda: asyncio.to_thread(lambda: not in_queue(slurm_cluster, filler)),
        "the filler job to end",
        timeout=30,
        interval=0.2,
    )


async def test_hub_restart_readopts_a_running_job(make_hub, slurm_cluster, tmp_path):
    data = tmp_path / "shared"
    config = hub_config(slurm_cluster)
    app1, client1 = await make_hub(
        data_dir=data, SessionManager__stop_workers_on_shutdown=False, **config
    )
    sid = (await client1.post("/dash/start-session", {"project_name": "keep"})).json()["session_id"]
    await client1.send(sid, "set_value", twig="period@binary", value=2.5)
    job_id = app1.manager.sessions[sid].spawner.job_id
    await app1.cleanup()
    assert job_state(slurm_cluster, job_id) == "RUNNING"  # the job outlived the hub

    app2, client2 = await make_hub(data_dir=data, **config)
    session = await session_of(client2, sid)
    assert session["status"] == "running" and session["project_name"] == "keep"
    assert app2.manager.sessions[sid].spawner.job_id == job_id
    reply = await client2.send(sid, "get_value", twig="period@binary")
    assert reply.json()["result"] == 2.5
    await client2.post(f"/dash/end-session/{sid}")
    await async_wait_for(lambda: not app2.manager.active(), "the end to finish", timeout=60)
    assert not in_queue(slurm_cluster, job_id)


async def test_a_refused_submission_is_a_503_with_slurms_words(make_hub, slurm_cluster):
    _, client = await make_hub(**hub_config(slurm_cluster, SlurmSpawner__partition="nosuch"))
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 503
    assert "sbatch refused the job" in resp.detail and "partition" in resp.detail.lower()


async def test_an_unreachable_controller_is_not_a_dead_worker(slurm_cluster, tmp_path):
    spawner = SlurmSpawner(
        session_id="paused",
        key=protocol.derive_session_key(b"pause-secret", "paused").decode(),
        session_dir=str(tmp_path / "session"),
        runtime_dir=str(tmp_path / "runtime"),
        worker_args=TEST_FACTORY,
        slurm_conf=str(slurm_cluster.conf),
        registration_ip=slurm_cluster.hub_ip,
        job_poll_interval=0.2,
        state_cache_seconds=0,
        command_timeout=1.0,
        command_retries=1,
        retry_delay=0.1,
    )
    await spawner.start()
    ctld = slurm_cluster.procs["slurmctld"].pid
    os.kill(ctld, signal.SIGSTOP)
    try:
        # unknown, so not reported dead; and it returns (its timeouts and retries bound
        # it) instead of waiting for the controller to wake up: a hang fails here
        assert await asyncio.wait_for(spawner.poll(), 120) is None
    finally:
        os.kill(ctld, signal.SIGCONT)
    assert await spawner.poll() is None
    await spawner.stop()
    assert isinstance(await spawner.poll(), int)
    spawner.clear_state()


async def test_a_controller_that_is_down(slurm_cluster, tmp_path):
    """Real clients against a port nobody listens on: retried, then reported, never
    taken for a dead job; nothing is submitted and no listener is left open."""
    down = tmp_path / "down.conf"
    text = slurm_cluster.conf.read_text()
    text = text.replace(f"SlurmctldPort={slurm_cluster.ctld_port}", "SlurmctldPort=1")
    down.write_text(text.replace("MessageTimeout=10", "MessageTimeout=1"))
    calls: list[str] = []

    class Counted(SlurmCommands):
        async def run_once(self, program: str, args: list[str], stdin: bytes | None = None) -> Any:
            calls.append(program)
            return await super().run_once(program, args, stdin)

    commands = Counted(slurm_conf=str(down), retries=2, retry_delay=0.2, timeout=10)
    with pytest.raises(SlurmUnavailable, match="Unable to contact slurm controller"):
        await commands.job("1")
    assert calls == ["scontrol"] * 3  # the first try and two retries
    calls.clear()
    with pytest.raises(SlurmError, match=r"sbatch refused the job: .*connect failure"):
        await commands.submit("#!/bin/bash\ntrue\n", [])
    with pytest.raises(SlurmUnavailable, match=r"Kill job error on job id 1: .*connect failure"):
        await commands.cancel("1")
    assert slurm_cluster.queue() == []  # nothing reached the real controller

    make = dict(
        key=protocol.derive_session_key(b"down-secret", "down").decode(),
        session_dir=str(tmp_path / "session"),
        runtime_dir=str(tmp_path / "runtime"),
        worker_args=TEST_FACTORY,
        registration_ip=slurm_cluster.hub_ip,
        command_retries=0,
    )
    spawner = SlurmSpawner(session_id="down", slurm_conf=str(down), **make)
    with pytest.raises(SpawnError, match="sbatch refused the job"):
        await spawner.start()
    assert not (tmp_path / "runtime" / "connection.json").exists()
    spawner.clear_state()

    # a running job whose controller becomes unreachable is "unknown", not dead
    live = SlurmSpawner(session_id="down", slurm_conf=str(slurm_cluster.conf), **make)
    await live.start()
    blind = SlurmSpawner(session_id="down", slurm_conf=str(down), **make)
    blind.load_state(live.get_state())
    assert await blind.poll() is None and blind.exit_reason() is None
    await live.stop()
    live.clear_state()
