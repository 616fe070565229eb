"""Before/after of the command path: hubs of two source trees and the ZMQ floor, in turn.

Starts a hub from ``--before`` (e.g. ``git archive main | tar -x -C /tmp/main``) and one
from ``--after`` (default: this checkout), one session each, and the HTTP -> ZMQ floor
(``floors.py``); then ``--rounds`` rounds of ``--per-round`` sequential pings to each
in turn, so drift in the machine's load hits all three alike. Reports each one's ping
p50/p99, its p50 over the floor's, and its server's own CPU per ping (psutil, the
process alone; counted in 10 ms ticks, so take the median over rounds).

    python benchmarks/ab_ping.py --before /tmp/main [--after .] [--rounds 10 --per-round 400]

Both hubs run with ``--spawner`` (default ``local``: one cold worker each, no fork server
loading PHOEBE twice) and a long start timeout, for machines under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import statistics
import time
from typing import Any

import orjson
import psutil
from common import Hub, client, emit, local_hub, machine, parser, percentiles, post_raw, summary
from floors import floor_servers

PING = orjson.dumps({"command": "ping"})


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


async def measure(
    targets: dict[str, tuple[psutil.Process, Any]], rounds: int, per_round: int
) -> list[str]:
    """Ping each target in turn; ``targets``: name -> (its server process, ping call)."""
    latencies: dict[str, list[float]] = {name: [] for name in targets}
    cpu: dict[str, list[float]] = {name: [] for name in targets}
    for _proc, call in targets.values():
        for _ in range(200):  # warm-up
            await call()
    for _ in range(rounds):
        for name, (proc, call) in targets.items():
            c0 = cpu_seconds(proc)
            for _ in range(per_round):
                t0 = time.perf_counter()
                await call()
                latencies[name].append(time.perf_counter() - t0)
            cpu[name].append((cpu_seconds(proc) - c0) / per_round)
    floor = statistics.median(latencies["floor"])
    lines = []
    for name in targets:
        st = percentiles(latencies[name])
        ratio = statistics.median(latencies[name]) / floor
        cpu_us = 1e6 * statistics.median(cpu[name])
        emit(
            "ab_ping",
            name,
            p50_over_floor=round(ratio, 3),
            server_cpu_us_per_ping=round(cpu_us),
            cpu_us_rounds=[round(1e6 * c) for c in cpu[name]],
            **st,
        )
        lines.append(
            f"{name:6s} ping p50 {st['p50_ms']:.3f} ms, p99 {st['p99_ms']:.3f} ms, "
            f"p50/floor {ratio:.3f}, server CPU {cpu_us:.0f} us per ping"
        )
    return lines


async def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="the source tree of the 'before' hub")
    p.add_argument("--after", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--per-round", type=int, default=400)
    p.add_argument("--spawner", default="local")
    args = p.parse_args()
    emit("ab_ping", "machine", before=args.before, after=args.after, **machine())
    extra = ["--Spawner.start_timeout=600"]
    with contextlib.ExitStack() as stack:
        hubs = {
            name: stack.enter_context(
                local_hub(spawner=args.spawner, max_sessions=4, extra=extra, repo=tree)
            )
            for name, tree in (("before", os.path.abspath(args.before)), ("after", args.after))
        }
        floors = stack.enter_context(floor_servers())
        floor_pid = next(
            c.pid
            for c in psutil.Process().children()
            if c.cmdline()[-1:] == ["zmq"] and "floors.py" in " ".join(c.cmdline())
        )
        async with contextlib.AsyncExitStack() as astack:
            http = await astack.enter_async_context(client(floors["zmq"]))
            targets: dict[str, tuple[psutil.Process, Any]] = {}
            started: list[tuple[Hub, str]] = []
            for name, (url, pid) in hubs.items():
                hub = await astack.enter_async_context(Hub(url, None, pid))
                sid = await hub.start()
                started.append((hub, sid))
                call = functools.partial(hub.post, f"/send/{sid}", PING)
                targets[name] = (psutil.Process(pid), call)
            targets["floor"] = (
                psutil.Process(floor_pid),
                functools.partial(post_raw, http, floors["zmq"], PING),
            )
            try:
                lines = await measure(targets, args.rounds, args.per_round)
            finally:
                await asyncio.gather(*(hub.end(sid) for hub, sid in started))
    summary("before/after ping", lines)


if __name__ == "__main__":
    asyncio.run(main())
