"""Start latency of a Docker session, with its floors measured in the same run.

For each kind, ``--starts`` sessions are started one after another and timed until the
worker answers a signed status request on its control channel (what the hub waits for
before a session is ``running``), then stopped (timed too):

* ``docker_run_true`` - the floor of any container: create, start, wait for and remove
  a container of the same image, mounts and hardening that runs ``true``;
* ``local`` - the local backend's cold start of the same worker (a new process);
* ``docker`` - DockerSpawner.start() of the same worker in a container.

By default the worker is the light test session (what a start costs without PHOEBE's
~3 s import); ``--phoebe`` times real PHOEBE workers as well. Without ``--docker-host``
a private engine is started (as root) the way the tests do and torn down afterwards.
Prints one JSON line per start, one summary line per kind, and a readable summary on
stderr.

    python benchmarks/docker_start.py [--starts 10] [--phoebe] [--docker-host URL]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import zmq.asyncio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PHOEBE_ENABLE_ONLINE_PASSBANDS", "FALSE")

from phoebe_kernel_worker import protocol  # noqa: E402
from phoebe_spawner.channels import WorkerChannel  # noqa: E402
from phoebe_spawner.spawners.base import Spawner  # noqa: E402
from phoebe_spawner.spawners.docker import DockerSpawner  # noqa: E402
from phoebe_spawner.spawners.local import LocalProcessSpawner  # noqa: E402
from tests.docker_engine import DockerEngine, start_engine  # noqa: E402

TEST_FACTORY = ["--session-factory", "phoebe_kernel_worker.testing:test_session"]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def emit(record: dict[str, Any]) -> None:
    print(orjson.dumps(record).decode(), flush=True)


async def time_session(spawner: Spawner, ctx: zmq.asyncio.Context) -> tuple[float, float]:
    """Seconds from start() to a signed status reply, and seconds stop() took."""
    t0 = time.perf_counter()
    endpoint = await spawner.start()
    channel = WorkerChannel(ctx, spawner.session_id, spawner.key.encode(), endpoint)
    channel.connect()
    try:
        await channel.control(protocol.STATUS_REQUEST, timeout=60)
        ready = time.perf_counter() - t0
    finally:
        await channel.close()
    t1 = time.perf_counter()
    await spawner.stop()
    stopped = time.perf_counter() - t1
    spawner.clear_state()
    return ready, stopped


def docker_run_true(engine_url: str, image: str, volumes: dict[str, str]) -> float:
    """Create, start, wait for and remove one hardened container running ``true``."""
    import docker

    client = docker.DockerClient(base_url=engine_url, timeout=120)
    try:
        t0 = time.perf_counter()
        client.containers.run(
            image,
            ["/usr/bin/true"],
            remove=True,
            network_mode="none",
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            init=True,
            user="1000:1000",
            volumes={host: {"bind": bind, "mode": "ro"} for host, bind in volumes.items()},
        )
        return time.perf_counter() - t0
    finally:
        client.close()


async def run(args: argparse.Namespace, engine: DockerEngine | None) -> None:
    base = Path(tempfile.mkdtemp(prefix="phs-bench-"))
    url = args.docker_host or (engine.url if engine else "")
    traits: dict[str, Any] = engine.traits() if engine else {"docker_host": url}
    if args.image:
        traits["image"] = args.image
    ctx = zmq.asyncio.Context()
    results: dict[str, list[float]] = {}
    stops: dict[str, list[float]] = {}

    def make(kind: str, n: int, phoebe: bool) -> Spawner:
        sid = f"bench-{kind}-{n}"
        common: dict[str, Any] = {
            "session_id": sid,
            "user": {"name": "bench", "user_id": "bench"},
            "key": protocol.derive_session_key(b"bench", sid).decode(),
            "session_dir": str(base / "s" / sid),
            "runtime_dir": str(base / "r" / sid),
            "start_timeout": 120,
        }
        if not phoebe:
            common["worker_args"] = TEST_FACTORY
        if kind.startswith("local"):
            return LocalProcessSpawner(**common)
        return DockerSpawner(**traits, **common)

    kinds = [("local", False), ("docker", False)]
    if args.phoebe:
        kinds += [("local_phoebe", True), ("docker_phoebe", True)]
    try:
        if engine or args.docker_host:
            for i in range(args.starts):
                seconds = await asyncio.to_thread(
                    docker_run_true, url, traits["image"], traits.get("volumes", {})
                )
                results.setdefault("docker_run_true", []).append(seconds)
                emit({"kind": "docker_run_true", "i": i, "seconds": round(seconds, 4)})
        # warm-up (page cache, image layers) is not what a user waits for twice
        for kind, phoebe in kinds:
            await time_session(make(kind, -1, phoebe), ctx)
        for i in range(args.starts):
            for kind, phoebe in kinds:  # interleaved, so drift hits every kind alike
                ready, stopped = await time_session(make(kind, i, phoebe), ctx)
                results.setdefault(kind, []).append(ready)
                stops.setdefault(kind, []).append(stopped)
                emit(
                    {
                        "kind": kind,
                        "i": i,
                        "seconds": round(ready, 4),
                        "stop_seconds": round(stopped, 4),
                    }
                )
    finally:
        ctx.destroy(linger=0)
        shutil.rmtree(base, ignore_errors=True)
    lines = []
    for kind, values in results.items():
        summary: dict[str, Any] = {
            "benchmark": "docker_start",
            "kind": kind,
            "n": len(values),
            "p50_s": round(statistics.median(values), 4),
            "p90_s": round(percentile(values, 90), 4),
            "max_s": round(max(values), 4),
        }
        if kind in stops:
            summary["stop_p50_s"] = round(statistics.median(stops[kind]), 4)
        emit(summary)
        lines.append(
            f"  {kind:<16} p50 {summary['p50_s'] * 1000:7.0f} ms   p90 "
            f"{summary['p90_s'] * 1000:7.0f} ms   max {summary['max_s'] * 1000:7.0f} ms"
            + (f"   (stop p50 {summary['stop_p50_s'] * 1000:.0f} ms)" if kind in stops else "")
        )
    print(
        f"session start until the first signed status reply, {args.starts} starts each:",
        file=sys.stderr,
    )
    print("\n".join(lines), file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--phoebe", action="store_true", help="also time real PHOEBE workers")
    parser.add_argument("--docker-host", default="", help="an existing engine (else a private one)")
    parser.add_argument("--image", default="", help="worker image (default: the test image)")
    args = parser.parse_args()
    if args.docker_host and not args.image:
        parser.error("--docker-host needs --image (the test image exists in private engines only)")
    engine = None if args.docker_host else start_engine()
    try:
        asyncio.run(run(args, engine))
    finally:
        if engine is not None:
            engine.stop()


if __name__ == "__main__":
    main()
