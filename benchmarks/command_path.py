"""The command path through the hub, side by side with the floors of the same run.

* ``ping``: ``--pings`` sequential round trips through the hub, the bare HTTP echo and
  the bare HTTP -> ZMQ echo (``floors.py``), interleaved in rounds so drift hits all
  three alike; p50/p99 and the ratio to the HTTP -> ZMQ floor.
* ``concurrent``: ``--clients`` clients on as many sessions, each sending pings as fast
  as it can, against the same number of clients on the ZMQ floor: throughput and p99.
* ``isolation``: one session's ping latency while another session runs a heavy
  ``run_compute`` over and over, against its idle latency just before.
* ``payload``: a 3 x 100k-point ``add_dataset`` upload and a 100k-point ``get_value``
  download through the hub, the same bytes through both floors, and the same command
  run in this process (``PhoebeSession.dispatch`` + the worker's serializer).
* ``compute``: ``run_compute`` of a 10k-point light curve through the hub and in this
  process; the hub's overhead as a share of the compute.

    python benchmarks/command_path.py [--url URL --token T] [--skip payload,compute]

Needs PHOEBE in this process for the in-process baselines (payload, compute).
"""

from __future__ import annotations

import asyncio
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from common import (
    Hub,
    client,
    emit,
    local_hub,
    machine,
    parser,
    percentiles,
    post_raw,
    summary,
)
from floors import floor_servers

PING = orjson.dumps({"command": "ping"})
#: the in-process baselines' session directory (PHOEBE writes nothing there; removed at exit)
SCRATCH = tempfile.TemporaryDirectory(prefix="phoebe-bench-")
# the same BLAS/OpenMP pools as a forked worker (ForkServerSpawner.template_threads), so the
# in-process baselines compute like the worker does (numpy is imported after this, lazily)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


async def timed(fn: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t0)
    return out


async def bench_ping(hub: Hub, sid: str, floors: dict[str, str], n: int) -> list[str]:
    rounds = 4
    times: dict[str, list[float]] = {"hub": [], "http": [], "zmq": []}
    async with client(floors["http"]) as http:
        calls = {
            "hub": lambda: hub.post(f"/send/{sid}", PING),
            "http": lambda: post_raw(http, floors["http"], PING),
            "zmq": lambda: post_raw(http, floors["zmq"], PING),
        }
        for call in calls.values():
            await timed(call, 50)  # warm-up
        for _ in range(rounds):
            for name, call in calls.items():
                times[name] += await timed(call, n // rounds)
    stats = {name: percentiles(values) for name, values in times.items()}
    for name, st in stats.items():
        emit("ping", name, **st)
    ratio = stats["hub"]["p50_ms"] / stats["zmq"]["p50_ms"]
    emit("ping", "ratio", p50_hub_over_zmq_floor=round(ratio, 3))
    return [
        f"ping p50/p99: hub {stats['hub']['p50_ms']:.3f}/{stats['hub']['p99_ms']:.3f} ms, "
        f"HTTP->ZMQ floor {stats['zmq']['p50_ms']:.3f}/{stats['zmq']['p99_ms']:.3f} ms, "
        f"HTTP floor {stats['http']['p50_ms']:.3f}/{stats['http']['p99_ms']:.3f} ms; "
        f"hub/floor p50 = {ratio:.2f}"
    ]


async def _clients(n_clients: int, per_client: int, call: Callable[[int], Awaitable[Any]]) -> Any:
    latencies: list[float] = []

    async def one(i: int) -> None:
        for _ in range(per_client):
            t0 = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n_clients)))
    wall = time.perf_counter() - t0
    return len(latencies) / wall, percentiles(latencies)


async def bench_concurrent(
    hub: Hub, floors: dict[str, str], n_clients: int, per_client: int
) -> list[str]:
    """``n_clients`` clients on as many sessions, against the same clients on the
    single-echo ZMQ floor (the issue's) and on a floor with one echo process per client
    (``zmq16``: each request wakes its own process, as with sessions)."""
    sids = await asyncio.gather(*(hub.start() for _ in range(n_clients)))
    per_session = floors["zmq16"]
    try:
        async with client(floors["zmq"]) as http:
            calls = {
                "zmq_floor": lambda i: post_raw(http, floors["zmq"], PING),
                "zmq16_floor": lambda i: post_raw(http, f"{per_session}/{i}", PING),
                "hub": lambda i: hub.post(f"/send/{sids[i]}", PING),
            }
            for call in calls.values():
                await _clients(n_clients, 20, call)  # warm-up
            results = {name: await _clients(n_clients, per_client, c) for name, c in calls.items()}
    finally:
        await asyncio.gather(*(hub.end(s) for s in sids))
    for name, (rate, st) in results.items():
        emit("concurrent", name, clients=n_clients, rps=round(rate, 1), **st)
    (h_rate, h_st), (f_rate, f_st) = results["hub"], results["zmq_floor"]
    (g_rate, g_st) = results["zmq16_floor"]
    emit(
        "concurrent",
        "ratio",
        throughput_hub_over_floor=round(h_rate / f_rate, 3),
        p99_hub_over_floor=round(h_st["p99_ms"] / f_st["p99_ms"], 3),
        throughput_hub_over_zmq16_floor=round(h_rate / g_rate, 3),
        p99_hub_over_zmq16_floor=round(h_st["p99_ms"] / g_st["p99_ms"], 3),
    )
    return [
        f"{n_clients} clients: hub {h_rate:.0f} req/s p99 {h_st['p99_ms']:.2f} ms; "
        f"floor {f_rate:.0f} req/s p99 {f_st['p99_ms']:.2f} ms; throughput x{h_rate / f_rate:.2f}, "
        f"p99 x{h_st['p99_ms'] / f_st['p99_ms']:.2f}; against one echo process per session "
        f"({g_rate:.0f} req/s, p99 {g_st['p99_ms']:.2f} ms): x{h_rate / g_rate:.2f}, "
        f"p99 x{h_st['p99_ms'] / g_st['p99_ms']:.2f}"
    ]


async def bench_isolation(hub: Hub, n: int, points: int, rounds: int = 4) -> list[str]:
    """One session's pings while another runs ``run_compute`` back to back, against the
    same session's pings with the other idle: ``rounds`` idle and loaded windows in turn
    (``n`` pings per condition in all), so drift in the machine's load hits both alike
    and the p99 of each rests on ``n`` samples."""
    import numpy as np

    quiet, busy = await hub.start(), await hub.start()
    idle: list[float] = []
    loaded: list[float] = []
    computes = 0
    try:
        times = np.linspace(0, 3, points).tolist()
        await hub.send(busy, "add_dataset", kind="lc", compute_times=times, overwrite=True)
        await timed(lambda: hub.post(f"/send/{quiet}", PING), 50)
        for _ in range(rounds):
            idle += await timed(lambda: hub.post(f"/send/{quiet}", PING), n // rounds)
            stop = asyncio.Event()

            async def heavy(stop: asyncio.Event = stop) -> None:
                nonlocal computes
                while not stop.is_set():
                    await hub.send(busy, "run_compute")
                    computes += 1

            task = asyncio.create_task(heavy())
            await asyncio.sleep(0.5)  # let the compute get going
            loaded += await timed(lambda: hub.post(f"/send/{quiet}", PING), n // rounds)
            stop.set()
            await task
    finally:
        await asyncio.gather(hub.end(quiet), hub.end(busy))
    i_st, l_st = percentiles(idle), percentiles(loaded)
    emit("isolation", "idle", rounds=rounds, **i_st)
    emit("isolation", "during_compute", computes=computes, rounds=rounds, **l_st)
    ratio = l_st["p99_ms"] / i_st["p99_ms"]
    emit("isolation", "ratio", p99_loaded_over_idle=round(ratio, 3))
    return [
        f"isolation: ping p99 idle {i_st['p99_ms']:.2f} ms, during another session's "
        f"run_compute {l_st['p99_ms']:.2f} ms (x{ratio:.2f}); p50 {i_st['p50_ms']:.2f} -> "
        f"{l_st['p50_ms']:.2f} ms ({len(idle)} + {len(loaded)} pings in {rounds} rounds)"
    ]


def in_process(steps: list[dict[str, Any]], repeats: int) -> list[float]:
    """Run ``steps`` in a PHOEBE session in this process; times of the last step + encoding."""
    from phoebe_kernel_worker.commands import PhoebeSession
    from phoebe_kernel_worker.serialize import dumps

    session = PhoebeSession(session_dir=Path(SCRATCH.name))
    out = []
    for _ in range(repeats):
        for step in steps[:-1]:
            session.dispatch(step["command"], {k: v for k, v in step.items() if k != "command"})
        last = dict(steps[-1])
        command = last.pop("command")
        t0 = time.perf_counter()
        dumps(
            {"success": True, "result": session.dispatch(command, orjson.loads(orjson.dumps(last)))}
        )
        out.append(time.perf_counter() - t0)
    return out


async def through_hub(hub: Hub, sid: str, steps: list[dict[str, Any]], repeats: int) -> Any:
    out = []
    size = 0
    for _ in range(repeats):
        for step in steps[:-1]:
            await hub.post(f"/send/{sid}", orjson.dumps(step))
        body = orjson.dumps(steps[-1])
        t0 = time.perf_counter()
        reply = await hub.post(f"/send/{sid}", body)
        out.append(time.perf_counter() - t0)
        assert orjson.loads(reply)["success"], reply[:300]
        size = max(len(body), len(reply))
    return out, size


async def through_floors(floors: dict[str, str], body: bytes, repeats: int) -> dict[str, float]:
    out = {}
    async with client(floors["http"]) as http:
        for name in ("http", "zmq"):
            url = floors[name]
            await post_raw(http, url, body)
            times = await timed(functools.partial(post_raw, http, url, body), repeats)
            out[name] = statistics.median(times)
    return out


async def bench_payload(hub: Hub, floors: dict[str, str], repeats: int) -> list[str]:
    import numpy as np

    rng = np.random.default_rng(1)
    t = np.linspace(0, 10, 100_000)
    upload = {
        "command": "add_dataset",
        "kind": "lc",
        "dataset": "big",
        "times": t.tolist(),
        "fluxes": (1 + 0.01 * rng.standard_normal(t.size)).tolist(),
        "sigmas": np.full(t.size, 0.01).tolist(),
        "overwrite": True,
    }
    # the same command with 10 points: PHOEBE's add_dataset costs ~0.2-0.4 s whatever
    # the size (it rebuilds constraints and twigs), so the difference is what the
    # 300k points themselves cost, through the hub and in process
    tiny = {**upload, **{k: upload[k][:10] for k in ("times", "fluxes", "sigmas")}}
    download = {"command": "get_value", "twig": "fluxes@big@dataset"}
    lines = []
    medians: dict[str, tuple[float, float]] = {}
    sid = await hub.start()
    try:
        cases = [
            ("upload_3x10", [tiny]),
            ("upload_3x100k", [upload]),
            ("download_100k", [upload, download]),
        ]
        for case, steps in cases:
            hub_times, size = await through_hub(hub, sid, steps, repeats)
            local = in_process(steps, repeats)
            body = orjson.dumps(steps[-1]) if case.startswith("upload") else b"x" * size
            floor = await through_floors(floors, body, repeats)
            h, p = statistics.median(hub_times), statistics.median(local)
            medians[case] = (h, p)
            emit(
                "payload",
                case,
                bytes=size,
                hub_ms=round(1000 * h, 1),
                in_process_ms=round(1000 * p, 1),
                hub_overhead_ms=round(1000 * (h - p), 1),
                http_floor_ms=round(1000 * floor["http"], 1),
                zmq_floor_ms=round(1000 * floor["zmq"], 1),
            )
            lines.append(
                f"{case} ({size / 1e6:.1f} MB): hub {1000 * h:.1f} ms = command in-process "
                f"{1000 * p:.1f} ms + {1000 * (h - p):.1f} ms hop; floors HTTP "
                f"{1000 * floor['http']:.1f} ms, HTTP->ZMQ {1000 * floor['zmq']:.1f} ms"
            )
    finally:
        await hub.end(sid)
    (h100k, p100k), (h10, p10) = medians["upload_3x100k"], medians["upload_3x10"]
    emit(
        "payload",
        "upload_points_cost",
        hub_ms=round(1000 * (h100k - h10), 1),
        in_process_ms=round(1000 * (p100k - p10), 1),
    )
    lines.append(
        f"what the 3 x 100k points add to add_dataset: {1000 * (h100k - h10):.1f} ms through "
        f"the hub, {1000 * (p100k - p10):.1f} ms in process (the rest is PHOEBE's own cost "
        f"of the command: {1000 * h10:.1f} ms through the hub with 10 points)"
    )
    return lines


async def bench_compute(hub: Hub, points: int, repeats: int) -> list[str]:
    """Alternate hub and in-process runs, so drift in the machine's load hits both."""
    import numpy as np

    from phoebe_kernel_worker.commands import PhoebeSession
    from phoebe_kernel_worker.serialize import dumps

    times = np.linspace(0, 1, points).tolist()
    setup = {"command": "add_dataset", "kind": "lc", "compute_times": times, "overwrite": True}
    local = PhoebeSession(session_dir=Path(SCRATCH.name))
    local.dispatch("add_dataset", {k: v for k, v in setup.items() if k != "command"})
    hub_times, local_times = [], []
    sid = await hub.start()
    try:
        await hub.post(f"/send/{sid}", orjson.dumps(setup))
        for _ in range(repeats):
            t0 = time.perf_counter()
            reply = await hub.post(f"/send/{sid}", orjson.dumps({"command": "run_compute"}))
            hub_times.append(time.perf_counter() - t0)
            assert orjson.loads(reply)["success"], reply[:300]
            t0 = time.perf_counter()
            dumps({"success": True, "result": local.dispatch("run_compute", {})})
            local_times.append(time.perf_counter() - t0)
    finally:
        await hub.end(sid)
    h, p = statistics.median(hub_times), statistics.median(local_times)
    share = (h - p) / p
    emit(
        "compute",
        f"run_compute_{points}",
        hub_ms=round(1000 * h, 1),
        in_process_ms=round(1000 * p, 1),
        overhead_ms=round(1000 * (h - p), 1),
        overhead_share=round(share, 4),
        hub_all_ms=[round(1000 * x, 1) for x in hub_times],
        in_process_all_ms=[round(1000 * x, 1) for x in local_times],
    )
    return [
        f"run_compute {points} points: hub {1000 * h:.0f} ms, in-process {1000 * p:.0f} ms, "
        f"overhead {1000 * (h - p):.0f} ms ({100 * share:.1f} %)"
    ]


async def run(hub: Hub, args: Any) -> list[str]:
    skip = set(args.skip.split(",")) if args.skip else set()
    lines: list[str] = []
    with floor_servers() as floors:
        if "ping" not in skip:
            sid = await hub.start()
            try:
                lines += await bench_ping(hub, sid, floors, args.pings)
            finally:
                await hub.end(sid)
        if "concurrent" not in skip:
            lines += await bench_concurrent(hub, floors, args.clients, args.per_client)
        if "isolation" not in skip:
            lines += await bench_isolation(hub, args.isolation_pings, args.heavy_points)
        if "payload" not in skip:
            lines += await bench_payload(hub, floors, args.repeats)
    if "compute" not in skip:
        lines += await bench_compute(hub, args.compute_points, args.compute_repeats)
    return lines


async def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--pings", type=int, default=2000)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--per-client", type=int, default=200)
    p.add_argument("--isolation-pings", type=int, default=2000)
    p.add_argument("--heavy-points", type=int, default=500)
    p.add_argument("--compute-points", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compute-repeats", type=int, default=3)
    p.add_argument("--skip", default="", help="comma-separated parts to leave out")
    p.add_argument(
        "--cpu-isolation",
        action="store_true",
        help="start the hub with SessionManager.cpu_isolation (needs a writable cgroup tree)",
    )
    args = p.parse_args()
    emit("command_path", "machine", **machine())
    if args.url:
        async with Hub(args.url, args.token) as hub:
            lines = await run(hub, args)
    else:
        extra = ["--SessionManager.cpu_isolation=True"] if args.cpu_isolation else []
        emit("command_path", "config", cpu_isolation=args.cpu_isolation)
        with local_hub(spawner="local-forkserver", extra=extra) as (url, pid):
            async with Hub(url, None, pid) as hub:
                lines = await run(hub, args)
    summary("command path", lines)


if __name__ == "__main__":
    asyncio.run(main())
