"""Session start latency: request -> a session that answers ``ping``, default / cold / fork / pool.

For each mode: ``--starts`` sequential starts (p50/p90/max; each session is ended
before the next start, outside the timing) and ``--concurrent`` starts at once (all
done within how long). The floor for a cold start is measured in the same run: a bare
``python -c "import phoebe; phoebe.default_binary()"``, once at the beginning and once
after each cold start (interleaved, so both see the same load; the ratio uses those).

    python benchmarks/session_start.py                       # starts a hub per mode
    python benchmarks/session_start.py --url URL --label fork [--token T]

Without ``--url`` the modes are hubs started here: ``default`` (the hub as the README's
quick start runs it: no spawner named, default limits, so the fork server), ``cold``
(spawner local), ``fork`` (local-forkserver) and ``pool`` (local-forkserver with a warm
pool of ``--concurrent``). One warm-up start per mode is not counted; in ``default``
the measured starts begin once the fork server's template is ready (it listens), and the
run checks the target of issue 15: default sequential p50 <= 50 ms. With a pool, each
sequential start waits until the pool is full again.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import sys
import time

import psutil
from common import RESULTS, Hub, emit, local_hub, machine, parser, percentiles, summary, wait_pool

#: issue 15: the default start, after the template is ready, within this (ms)
DEFAULT_P50_TARGET_MS = 50.0

MODES: dict[str, dict[str, str | int | None]] = {
    "default": {"spawner": None, "pool": 0},  # nothing named: the hub's own defaults
    "cold": {"spawner": "local", "pool": 0},
    "fork": {"spawner": "local-forkserver", "pool": 0},
    "pool": {"spawner": "local-forkserver", "pool": -1},  # -1: the concurrency
}


def reference(repeats: int) -> float:
    """Median wall time of a bare PHOEBE import + default bundle in a new process."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "import phoebe; phoebe.default_binary()"],
            check=True,
            env={"PHOEBE_ENABLE_ONLINE_PASSBANDS": "FALSE", "PATH": "/usr/bin:/bin"},
            capture_output=True,
        )
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def wait_template(hub_pid: int, timeout: float = 300) -> float:
    """Seconds until the hub's fork server listens (its template loaded PHOEBE)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        for child in psutil.Process(hub_pid).children():
            with contextlib.suppress(psutil.Error):
                if "phoebe_kernel_worker.forkserver" in " ".join(child.cmdline()) and any(
                    str(c.laddr).endswith("forkserver.sock")  # bound (unix: no LISTEN status)
                    for c in child.net_connections(kind="unix")
                ):
                    return time.perf_counter() - t0
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the default hub's fork server was not ready within {timeout:g} s")


async def start_and_ping(hub: Hub) -> tuple[str, float]:
    t0 = time.perf_counter()
    sid = await hub.start()
    await hub.send(sid, "ping")
    return sid, time.perf_counter() - t0


async def measure(
    hub: Hub, label: str, starts: int, concurrent: int, pool: int, interleave: bool
) -> list[str]:
    await wait_pool(hub, pool)
    sid, _ = await start_and_ping(hub)  # warm-up, not counted: a fork server may still load
    await hub.end(sid)
    await wait_pool(hub, pool)
    latencies, floors = [], []
    for _ in range(starts):
        sid, seconds = await start_and_ping(hub)
        latencies.append(seconds)
        await hub.end(sid)
        if interleave:  # the floor right after each start: the same load for both
            floors.append(await asyncio.to_thread(reference, 1))
        await wait_pool(hub, pool)
    seq = emit("session_start", label, kind="sequential", **percentiles(latencies))
    if floors:
        floor = statistics.median(floors)
        emit(
            "session_start",
            f"{label}_floor",
            kind="interleaved_floor",
            seconds=round(floor, 3),
            p50_over_floor=round(statistics.median(latencies) / floor, 3),
            **percentiles(floors),
        )
    await wait_pool(hub, pool)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(start_and_ping(hub) for _ in range(concurrent)))
    wall = time.perf_counter() - t0
    conc = emit(
        "session_start",
        label,
        kind="concurrent",
        concurrency=concurrent,
        all_done_ms=round(1000 * wall, 1),
        **percentiles([s for _, s in results]),
    )
    await asyncio.gather(*(hub.end(sid) for sid, _ in results))
    return [
        f"{label:5s} sequential p50 {seq['p50_ms']:8.1f} ms  p90 {seq['p90_ms']:8.1f} ms  "
        f"max {seq['max_ms']:8.1f} ms   {concurrent} at once: all done in "
        f"{conc['all_done_ms']:8.1f} ms"
    ]


async def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--label", default="given", help="the mode of the hub at --url")
    p.add_argument("--modes", default="default,cold,fork,pool")
    p.add_argument("--starts", type=int, default=20)
    p.add_argument("--concurrent", type=int, default=16)
    p.add_argument("--ref-repeats", type=int, default=3)
    p.add_argument("--pool", type=int, default=0, help="warm pool size of the hub at --url")
    args = p.parse_args()
    emit("session_start", "machine", **machine())
    ref = reference(args.ref_repeats)
    emit("session_start", "floor_import_phoebe", seconds=round(ref, 3))
    lines = [f"floor: python -c 'import phoebe; phoebe.default_binary()'  {1000 * ref:8.1f} ms"]
    if args.url:
        async with Hub(args.url, args.token) as hub:
            lines += await measure(
                hub, args.label, args.starts, args.concurrent, args.pool, args.label == "cold"
            )
    else:
        for mode in args.modes.split(","):
            conf = MODES[mode]
            pool = args.concurrent if conf["pool"] == -1 else int(str(conf["pool"]))
            spawner = None if conf["spawner"] is None else str(conf["spawner"])
            with local_hub(spawner=spawner, pool=pool) as (url, pid):
                async with Hub(url, None, pid) as hub:
                    if mode == "default":
                        ready = await wait_template(pid)
                        emit("session_start", "default_template_ready", seconds=round(ready, 3))
                        lines.append(f"default: the template was ready {ready:.1f} s after /health")
                    lines += await measure(
                        hub, mode, args.starts, args.concurrent, pool, mode == "cold"
                    )
    for row in RESULTS:
        if row.get("case") == "default" and row.get("kind") == "sequential":
            ok = row["p50_ms"] <= DEFAULT_P50_TARGET_MS
            lines.append(
                f"default start p50 {row['p50_ms']:.1f} ms after the template is ready: "
                f"{'meets' if ok else 'MISSES'} the {DEFAULT_P50_TARGET_MS:.0f} ms target"
            )
        if row.get("kind") == "interleaved_floor":
            lines.append(
                f"{row['case']}: bare import + default bundle interleaved with the cold starts "
                f"p50 {row['p50_ms']:.0f} ms; cold p50 / floor = {row['p50_over_floor']:.2f}"
            )
    summary("session start", lines)


if __name__ == "__main__":
    asyncio.run(main())
