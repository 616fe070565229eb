"""Session start latency: request -> a session that answers ``ping``, in several modes.

For each mode: ``--starts`` sequential starts (p50/p90/max; each session is ended
before the next start, outside the timing) and ``--concurrent`` starts at once (all
done within how long). The floor for a cold start is measured in the same run: a bare
``python -c "import phoebe; phoebe.default_binary()"``, once at the beginning and once
after each cold start (interleaved, so both see the same load; the ratio uses those).

    python benchmarks/session_start.py                       # starts a hub per mode
    python benchmarks/session_start.py --url URL --label fork [--token T]
    python benchmarks/session_start.py --interleave fork-p0,fork-p4 --concurrent 40

``--interleave`` starts the hubs of the listed modes side by side and takes turns: one
sequential start on each in turn, then one burst of ``--concurrent`` on each in turn,
``--bursts`` times, so every mode sees the same load (ratios between modes hold on a
busy machine).

Without ``--url`` the modes are hubs started here: ``default`` (the hub as the README's
quick start runs it: no spawner named, default limits, so the fork server), ``cold``
(spawner local), ``fork`` (local-forkserver) and ``pool`` (local-forkserver with a warm
pool of ``--concurrent``), and ``fork-pN`` (local-forkserver with
``ForkServerSpawner.prefork = N`` spares; ``fork-p0`` forks on demand). One warm-up
start per mode is not counted; in ``default`` the measured starts begin once the fork
server's template is ready (it listens), and the run checks the target of issue 15:
default sequential p50 <= 50 ms, and of issue 17: ``--concurrent 40`` all ready within
2 s. With a pool, each sequential start (and the burst) waits until the pool is full
again; with spares, until the fork server has its spares again (a start after a quiet
moment), and the spares' private memory (USS) is reported.
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
#: issue 17: a class of 40 starting at once, all ready within this (ms)
BURST_TARGET_MS = 2000.0
BURST_TARGET_N = 40

MODES: dict[str, dict[str, str | int | None]] = {
    "default": {"spawner": None, "pool": 0},  # nothing named: the hub's own defaults
    "cold": {"spawner": "local", "pool": 0},
    "fork": {"spawner": "local-forkserver", "pool": 0},
    "pool": {"spawner": "local-forkserver", "pool": -1},  # -1: the concurrency
}


def mode_config(mode: str, concurrent: int) -> tuple[str | None, int, list[str]]:
    """The spawner, warm pool size and extra hub arguments of ``mode``."""
    if mode.startswith("fork-p"):
        return "local-forkserver", 0, [f"--ForkServerSpawner.prefork={int(mode[6:])}"]
    conf = MODES[mode]
    pool = concurrent if conf["pool"] == -1 else int(str(conf["pool"]))
    return (None if conf["spawner"] is None else str(conf["spawner"])), pool, []


def spares_expected(mode: str) -> int:
    """How many spares the mode's fork server keeps (0 without one, or on a tree without
    spares: the script also measures the code before them)."""
    if mode.startswith("fork-p"):
        return int(mode[6:])
    if mode not in ("default", "fork"):
        return 0
    from phoebe_spawner.spawners.forkserver import ForkServerSpawner

    trait = ForkServerSpawner.class_traits().get("prefork")
    return int(trait.default_value) if trait is not None else 0


def spares_of(hub_pid: int) -> list[psutil.Process]:
    """The fork server's spares (children named ``phoebe-spare``, waiting for a request)."""
    found = []
    for child in psutil.Process(hub_pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.name() == "phoebe-spare" and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
    return found


async def wait_spares(hub: Hub, count: int, timeout: float = 120) -> list[psutil.Process]:
    """Wait until the hub's fork server holds ``count`` spares."""
    assert hub.pid is not None
    t0 = time.perf_counter()
    while count > 0:
        found = spares_of(hub.pid)
        if len(found) >= count:
            return found
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"the fork server did not have {count} spares in {timeout:g} s")
        await asyncio.sleep(0.05)
    return []


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
    hub: Hub,
    label: str,
    starts: int,
    concurrent: int,
    pool: int,
    interleave: bool,
    spares: int = 0,
) -> list[str]:
    await wait_pool(hub, pool)
    sid, _ = await start_and_ping(hub)  # warm-up, not counted: a fork server may still load
    await hub.end(sid)
    await wait_pool(hub, pool)
    lines = []
    if spares:
        uss = [p.memory_full_info().uss for p in await wait_spares(hub, spares)]
        row = emit(
            "session_start",
            label,
            kind="spares",
            spares=len(uss),
            uss_mib_median=round(statistics.median(uss) / 2**20, 2),
            uss_mib_total=round(sum(uss) / 2**20, 2),
        )
        lines.append(
            f"{label:5s} {row['spares']} spares: USS median {row['uss_mib_median']:.2f} MiB, "
            f"total {row['uss_mib_total']:.1f} MiB"
        )
    latencies, floors = [], []
    for _ in range(starts):
        await wait_spares(hub, spares)
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
    await wait_spares(hub, spares)
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
        *lines,
        f"{label:5s} sequential p50 {seq['p50_ms']:8.1f} ms  p90 {seq['p90_ms']:8.1f} ms  "
        f"max {seq['max_ms']:8.1f} ms   {concurrent} at once: all done in "
        f"{conc['all_done_ms']:8.1f} ms (p50 {conc['p50_ms']:.0f} ms, p90 {conc['p90_ms']:.0f} ms)",
    ]


async def interleaved(modes: list[str], starts: int, concurrent: int, bursts: int) -> list[str]:
    """The modes' hubs side by side, taking turns (see the module's docstring)."""
    async with contextlib.AsyncExitStack() as stack:
        hubs: dict[str, Hub] = {}
        for mode in modes:
            spawner, pool, extra = mode_config(mode, concurrent)
            # bursts one after another from one address: no per-address cap in the way
            extra = [*extra, "--PhoebeSpawnerApp.max_connections_per_ip=1024"]
            url, pid = stack.enter_context(local_hub(spawner=spawner, pool=pool, extra=extra))
            hubs[mode] = await stack.enter_async_context(Hub(url, None, pid))
        for hub in hubs.values():
            assert hub.pid is not None
            await wait_template(hub.pid)
            sid, _ = await start_and_ping(hub)  # warm-up, not counted
            await hub.end(sid)
        seq: dict[str, list[float]] = {mode: [] for mode in modes}
        walls: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(starts):
            for mode, hub in hubs.items():
                await wait_spares(hub, spares_expected(mode))
                sid, seconds = await start_and_ping(hub)
                seq[mode].append(seconds)
                await hub.end(sid)
        for _ in range(bursts):
            for mode, hub in hubs.items():
                await wait_spares(hub, spares_expected(mode))
                t0 = time.perf_counter()
                results = await asyncio.gather(*(start_and_ping(hub) for _ in range(concurrent)))
                walls[mode].append(time.perf_counter() - t0)
                await asyncio.gather(*(hub.end(sid) for sid, _ in results))
    lines = []
    base = modes[0]
    for mode in modes:
        row = emit("session_start", mode, kind="interleaved_sequential", **percentiles(seq[mode]))
        burst = emit(
            "session_start",
            mode,
            kind="interleaved_burst",
            concurrency=concurrent,
            all_done_ms=[round(1000 * w, 1) for w in walls[mode]],
            all_done_median_ms=round(1000 * statistics.median(walls[mode]), 1),
        )
        seq_ratio = statistics.median(seq[mode]) / statistics.median(seq[base])
        burst_ratio = statistics.median(walls[mode]) / statistics.median(walls[base])
        lines.append(
            f"{mode:9s} sequential p50 {row['p50_ms']:7.1f} ms p90 {row['p90_ms']:7.1f} ms "
            f"({seq_ratio:.2f}x {base})   {concurrent} at once: all ready in "
            f"{burst['all_done_median_ms']:7.0f} ms median of {bursts} "
            f"({burst_ratio:.2f}x {base})"
        )
    return lines


async def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--label", default="given", help="the mode of the hub at --url")
    p.add_argument("--modes", default="default,cold,fork,pool")
    p.add_argument("--starts", type=int, default=20)
    p.add_argument("--concurrent", type=int, default=16)
    p.add_argument("--ref-repeats", type=int, default=3)
    p.add_argument("--pool", type=int, default=0, help="warm pool size of the hub at --url")
    p.add_argument("--interleave", help="modes whose hubs run side by side, taking turns")
    p.add_argument("--bursts", type=int, default=3, help="bursts per mode with --interleave")
    args = p.parse_args()
    emit("session_start", "machine", **machine())
    ref = reference(args.ref_repeats)
    emit("session_start", "floor_import_phoebe", seconds=round(ref, 3))
    lines = [f"floor: python -c 'import phoebe; phoebe.default_binary()'  {1000 * ref:8.1f} ms"]
    if args.interleave:
        modes = args.interleave.split(",")
        lines += await interleaved(modes, args.starts, args.concurrent, args.bursts)
    elif args.url:
        async with Hub(args.url, args.token) as hub:
            lines += await measure(
                hub, args.label, args.starts, args.concurrent, args.pool, args.label == "cold"
            )
    else:
        for mode in args.modes.split(","):
            spawner, pool, extra = mode_config(mode, args.concurrent)
            with local_hub(spawner=spawner, pool=pool, extra=extra) as (url, pid):
                async with Hub(url, None, pid) as hub:
                    if mode == "default":
                        ready = await wait_template(pid)
                        emit("session_start", "default_template_ready", seconds=round(ready, 3))
                        lines.append(f"default: the template was ready {ready:.1f} s after /health")
                    lines += await measure(
                        hub,
                        mode,
                        args.starts,
                        args.concurrent,
                        pool,
                        mode == "cold",
                        spares_expected(mode),
                    )
    for row in RESULTS:
        if row.get("case") == "default" and row.get("kind") == "sequential":
            ok = row["p50_ms"] <= DEFAULT_P50_TARGET_MS
            lines.append(
                f"default start p50 {row['p50_ms']:.1f} ms after the template is ready: "
                f"{'meets' if ok else 'MISSES'} the {DEFAULT_P50_TARGET_MS:.0f} ms target"
            )
        if (
            row.get("case") == "default"
            and row.get("kind") == "concurrent"
            and row["concurrency"] == BURST_TARGET_N
        ):
            ok = row["all_done_ms"] <= BURST_TARGET_MS
            lines.append(
                f"default: {BURST_TARGET_N} at once all ready in {row['all_done_ms']:.0f} ms: "
                f"{'meets' if ok else 'MISSES'} the {BURST_TARGET_MS:.0f} ms target"
            )
        if row.get("kind") == "interleaved_floor":
            lines.append(
                f"{row['case']}: bare import + default bundle interleaved with the cold starts "
                f"p50 {row['p50_ms']:.0f} ms; cold p50 / floor = {row['p50_over_floor']:.2f}"
            )
    summary("session start", lines)


if __name__ == "__main__":
    asyncio.run(main())
