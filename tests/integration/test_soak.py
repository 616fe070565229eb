"""A mixed soak against a hub running as its own process.

For ``PHOEBE_SPAWNER_SOAK_SECONDS`` (300 by default, as CI runs it; set it lower
for a quick local run), four clients start sessions, send commands, run jobs and
follow their event streams, take checkpoints, poll memory and end sessions. No
response may be a 5xx, and the hub's resident memory may grow only a bounded amount
after warm-up.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time

import psutil
import pytest

from ..conftest import Client
from ..sse import SSEStream
from ..waiting import async_wait_for, wait_for

SOAK_SECONDS = float(os.environ.get("PHOEBE_SPAWNER_SOAK_SECONDS", "300"))
CLIENTS = 4
MAX_GROWTH_MIB = 64


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def client_loop(client: Client, rng: random.Random, until: float, codes: list[int]) -> int:
    cycles = 0
    while time.monotonic() < until:
        resp = await client.post("/dash/start-session", {"project_name": f"soak-{cycles}"})
        codes.append(resp.status)
        if resp.status != 200:
            await asyncio.sleep(0.2)
            continue
        sid = resp.json()["session_id"]
        for i in range(rng.randint(5, 20)):
            op = rng.random()
            if op < 0.4:
                resp = await client.send(sid, "set_value", twig=f"p{i}", value=rng.random())
            elif op < 0.6:
                resp = await client.send(sid, "echo", payload="x" * rng.randint(0, 100_000))
            elif op < 0.75:
                job = await client.post(
                    f"/api/v1/sessions/{sid}/jobs", {"command": "steps", "n": 3, "delay": 0.01}
                )
                codes.append(job.status)
                if job.status == 202:
                    stream = await SSEStream.open(client.base_url, job.json()["links"]["events"])
                    events = await stream.events_until_end()
                    await stream.close()
                    assert events[-1]["event"] == "succeeded"
                resp = await client.get("/api/v1/jobs?limit=5")
            elif op < 0.85:
                resp = await client.post(f"/api/v1/sessions/{sid}/checkpoints", {})
            elif op < 0.95:
                resp = await client.get("/dash/session-memory")
            else:
                resp = await client.get("/dash/sessions")
            codes.append(resp.status)
        codes.append((await client.post(f"/dash/end-session/{sid}")).status)
        cycles += 1
    return cycles


@pytest.mark.timeout(SOAK_SECONDS + 180)
async def test_mixed_soak(tmp_path):
    port = free_port()
    config = tmp_path / "config.py"
    config.write_text(
        "c.LocalProcessSpawner.worker_args = "
        "['--session-factory', 'phoebe_kernel_worker.testing:test_session']\n"
        "c.SessionManager.start_rate_per_minute = 0\n"
        "c.CheckpointManager.max_per_user = 5\n"
    )
    hub = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "phoebe_spawner",
            "--port",
            str(port),
            f"--data-dir={tmp_path / 'data'}",
            f"--config={config}",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = Client(f"http://127.0.0.1:{port}")
    workers: list[psutil.Process] = []
    try:

        async def healthy() -> bool:
            try:
                return (await client.get("/health")).status == 200
            except OSError:
                return False

        await async_wait_for(healthy, "the hub to answer /health", timeout=30, interval=0.1)
        rng = random.Random(42)
        codes: list[int] = []
        start = time.monotonic()
        warmup = min(30.0, SOAK_SECONDS / 5)
        loops = [
            asyncio.ensure_future(
                client_loop(client, random.Random(rng.random()), start + SOAK_SECONDS, codes)
            )
            for _ in range(CLIENTS)
        ]
        await asyncio.sleep(warmup)
        baseline = psutil.Process(hub.pid).memory_info().rss
        cycles = sum(await asyncio.gather(*loops))
        final = psutil.Process(hub.pid).memory_info().rss
        workers = psutil.Process(hub.pid).children(recursive=True)
        errors = [c for c in codes if c >= 500]
        assert not errors, f"{len(errors)} server errors: {sorted(set(errors))}"
        assert cycles >= CLIENTS and len(codes) > 50
        growth = (final - baseline) / 2**20
        assert growth < MAX_GROWTH_MIB, f"hub RSS grew {growth:.1f} MiB during the soak"
        print(
            f"\nsoak: {SOAK_SECONDS:.0f} s, {cycles} sessions, {len(codes)} requests, "
            f"hub RSS growth {growth:.1f} MiB"
        )
    finally:
        hub.terminate()
        try:
            hub.wait(timeout=30)
        except subprocess.TimeoutExpired:
            hub.kill()
            hub.wait()
    wait_for(lambda: not any(w.is_running() for w in workers), "the workers to exit", timeout=10)
