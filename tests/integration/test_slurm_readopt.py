"""Restart recovery of Slurm sessions: what docs/slurm.md promises beyond a plain re-adoption.

- a job id the controller now gives to another job is not ours: the session is failed,
  its worker is not adopted even when the old endpoints still answer, and the foreign
  job is left alone (never cancelled);
- with ``SessionManager.readopt_workers = False`` a starting hub cancels the jobs a
  previous hub left behind and marks their sessions failed.

Runs on the private cluster of tests/slurm_cluster.py with the light test worker.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ..waiting import async_wait_for
from .test_slurm import hub_config, in_queue, job_state, session_of

pytestmark = pytest.mark.slurm


async def test_a_reused_job_id_is_not_readopted_nor_cancelled(make_hub, slurm_cluster, tmp_path):
    data = tmp_path / "shared"
    config = hub_config(slurm_cluster)
    app1, client1 = await make_hub(
        data_dir=data, SessionManager__stop_workers_on_shutdown=False, **config
    )
    sid = (await client1.post("/dash/start-session", {})).json()["session_id"]
    spawner = app1.manager.sessions[sid].spawner
    ours = spawner.job_id
    assert spawner.job_name == f"phoebe-{sid}"
    foreign = ""
    try:
        # another user's job, which Slurm has given the id the session recorded (the
        # recorded id is pointed at it: a controller reuses ids after a state reset).
        # Our own job keeps running, so the recorded endpoints still answer: only the
        # name check can tell the hub that this id is not its job any more.
        foreign = slurm_cluster.run(
            "sbatch", "--parsable", "-J", "phoebe-someone-else", "-c", "1", "--mem=64M",
            "-o", "/dev/null", "--wrap", "exec sleep 300",
        ).strip()  # fmt: skip
        await async_wait_for(
            lambda: asyncio.to_thread(lambda: job_state(slurm_cluster, foreign) == "RUNNING"),
            "the foreign job to run",
            timeout=30,
            interval=0.2,
        )
        state: dict[str, Any] = {**spawner.get_state(), "job_id": foreign}
        await app1.store.update_session(sid, spawner_state=state)
        await app1.cleanup()
        assert job_state(slurm_cluster, ours) == "RUNNING"

        app2, client2 = await make_hub(data_dir=data, **config)
        session = await session_of(client2, sid)
        assert session["status"] == "failed"
        assert session["reason"] == "worker was lost while the hub was down"
        assert not app2.manager.sessions[sid].readopted
        assert (await client2.send(sid, "ping")).status == 410
        row = await app2.store.get_session(sid)
        assert row["status"] == "failed" and row["spawner_state"] == {}
        # the foreign job was not cancelled (nor was ours: the hub no longer knows it)
        assert job_state(slurm_cluster, foreign) == "RUNNING"
        assert job_state(slurm_cluster, ours) == "RUNNING"
    finally:
        for job in (foreign, ours):
            if job:
                slurm_cluster.run("scancel", job, check=False)
    await async_wait_for(
        lambda: asyncio.to_thread(
            lambda: not in_queue(slurm_cluster, foreign) and not in_queue(slurm_cluster, ours)
        ),
        "the jobs to end",
        timeout=30,
        interval=0.2,
    )


async def test_readopt_false_cancels_the_jobs_a_previous_hub_left(
    make_hub, slurm_cluster, tmp_path
):
    data = tmp_path / "shared"
    config = hub_config(slurm_cluster, SessionManager__readopt_workers=False)
    # the first hub dies without stopping its workers (as a crash would)
    app1, client1 = await make_hub(
        data_dir=data, SessionManager__stop_workers_on_shutdown=False, **config
    )
    sids = [(await client1.post("/dash/start-session", {})).json()["session_id"] for _ in "ab"]
    jobs = [app1.manager.sessions[sid].spawner.job_id for sid in sids]
    assert (await client1.send(sids[0], "ping")).status == 200
    await app1.cleanup()
    try:
        # a job does not notice its hub's death by itself
        assert [job_state(slurm_cluster, job) for job in jobs] == ["RUNNING", "RUNNING"]

        app2, client2 = await make_hub(data_dir=data, **config)
        for sid in sids:
            session = await session_of(client2, sid)
            assert session["status"] == "failed"
            assert session["reason"] == "the hub restarted and does not re-adopt workers"
            row = await app2.store.get_session(sid)
            assert row["status"] == "failed"
            assert row["termination_reason"] == "the hub restarted and does not re-adopt workers"
        for job in jobs:
            assert not in_queue(slurm_cluster, job)
            assert job_state(slurm_cluster, job) in ("CANCELLED", "PURGED")
        assert (await client2.send(sids[0], "ping")).status == 410
    finally:
        for job in jobs:
            slurm_cluster.run("scancel", job, check=False)
