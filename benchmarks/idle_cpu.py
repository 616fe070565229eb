"""Idle cost of the hub's background work: CPU of a hub holding N idle forked sessions.

Issue 17: the hub's loops (death detection, memory sampling) visit every session every
interval; this measures what that costs while nobody sends a command, and whether a
memory sampling round delays requests. Two hubs (``local-forkserver``, auth mode none),
each with ``--sessions`` idle sessions (default 300, started ``--concurrency`` at once):

* ``watch``: memory sampling off (``memory_interval`` 3600 s), so the hub's idle work
  is death detection alone (the poll loop every ``poll_interval``, 1 s, or the
  event-driven exit watch). Its CPU per second is the cost of one poll interval.
* ``sample``: memory sampling every ``--memory-interval`` s (10: three rounds in a
  30 s window, three times the default rate). The CPU above ``watch``'s, divided by the
  rounds in the window, is the cost of one sampling round. After the CPU window, pings
  to random sessions for ``--ping-seconds`` show whether the rounds delay commands.

The cull loop is set to an hour: its first pass after the starts writes every
session's last activity to the store once (one transaction per session), a one-off
that would otherwise land in the window or not depending on timing. The hub's CPU is
its own process's (``psutil`` ``cpu_times`` user + system of the hub pid, children
excluded) over ``--window`` seconds with no request in flight. The
derived "idle at defaults" line adds one round per 30 s (the default
``memory_interval``) to the ``watch`` hub's rate. Two cores shared with other work are
noisy: quote the load (``machine``) and the numbers of one run side by side.

    python benchmarks/idle_cpu.py [--sessions 300] [--window 30]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import psutil
from common import Hub, emit, local_hub, machine, parser, percentiles, summary
from session_start import wait_template

DEFAULT_MEMORY_INTERVAL = 30.0


async def start_all(hub: Hub, n: int, concurrency: int) -> tuple[list[str], int]:
    """Start ``n`` sessions, ``concurrency`` at a time (a failed start is tried again,
    up to three times: a loaded machine may miss a start timeout); their ids and the
    number of failed attempts."""
    sids: list[str] = []
    failures = 0
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        nonlocal failures
        async with gate:
            for attempt in range(3):
                try:
                    sids.append(await hub.start())
                    return
                except RuntimeError:
                    failures += 1
                    if attempt == 2:
                        raise

    await asyncio.gather(*(one() for _ in range(n)))
    return sids, failures


async def end_all(hub: Hub, sids: list[str], concurrency: int) -> None:
    """End the sessions, ``concurrency`` at a time (the hub allows 64 connections per
    address)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(sid: str) -> None:
        async with gate:
            await hub.end(sid)

    await asyncio.gather(*(one(sid) for sid in sids))


def hub_cpu(pid: int) -> float:
    """User + system CPU seconds of the hub process itself (children excluded)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def idle_cpu(pid: int, window: float) -> float:
    """Percent of one core the hub used over ``window`` seconds of idleness."""
    c0, t0 = hub_cpu(pid), time.perf_counter()
    await asyncio.sleep(window)
    c1, t1 = hub_cpu(pid), time.perf_counter()
    return 100.0 * (c1 - c0) / (t1 - t0)


async def pings(hub: Hub, sids: list[str], seconds: float) -> list[float]:
    """Ping a random session every 20 ms for ``seconds``; the latencies."""
    out: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        await hub.send(random.choice(sids), "ping")
        out.append(time.perf_counter() - t0)
        await asyncio.sleep(0.02)
    return out


async def run_case(case: str, args: argparse.Namespace, memory_interval: float) -> dict[str, float]:
    n: int = args.sessions
    extra = [
        f"--SessionManager.memory_interval={memory_interval:g}",
        # the cull loop's first pass after the starts writes each session's last activity
        # once (a one-off, not idle work): it must not fall into the window by chance
        "--SessionManager.cull_interval=3600",
    ]
    with local_hub(spawner="local-forkserver", max_sessions=n + 10, extra=extra) as (url, pid):
        async with Hub(url, None, pid) as hub:
            await wait_template(pid)  # forked starts only, not cold ones while it loads
            t0 = time.perf_counter()
            sids, failures = await start_all(hub, n, args.concurrency)
            started = time.perf_counter() - t0
            await asyncio.sleep(args.settle)
            cpu = await idle_cpu(pid, args.window)
            latencies = await pings(hub, sids, args.ping_seconds)
            row = emit(
                "idle_cpu",
                case,
                sessions=len(sids),
                memory_interval=memory_interval,
                start_all_s=round(started, 1),
                failed_starts=failures,
                window_s=args.window,
                hub_cpu_percent=round(cpu, 3),
                ping=percentiles(latencies),
                load=machine()["load"],
            )
            await end_all(hub, sids, args.concurrency)
    return {"cpu": cpu, "p50": row["ping"]["p50_ms"], "p99": row["ping"]["p99_ms"]}


async def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--window", type=float, default=30.0)
    p.add_argument("--settle", type=float, default=5.0, help="seconds between start and window")
    p.add_argument("--memory-interval", type=float, default=10.0)
    p.add_argument("--ping-seconds", type=float, default=10.0)
    args = p.parse_args()
    if args.url:
        p.error("idle_cpu starts its own hubs (it needs the hub's pid)")
    emit("idle_cpu", "machine", **machine())
    watch = await run_case("watch", args, 3600.0)
    sample = await run_case("sample", args, args.memory_interval)
    rounds = args.window / args.memory_interval
    # CPU seconds of one sampling round, over what death detection costs
    round_s = max(0.0, (sample["cpu"] - watch["cpu"]) / 100.0 * args.window / rounds)
    poll_ms = 10.0 * watch["cpu"]  # ms of CPU per second = per 1 s poll interval
    defaults = watch["cpu"] + 100.0 * round_s / DEFAULT_MEMORY_INTERVAL
    emit(
        "idle_cpu",
        "derived",
        sessions=args.sessions,
        poll_interval_cpu_ms=round(poll_ms, 2),
        sample_round_cpu_ms=round(1000 * round_s, 1),
        idle_defaults_cpu_percent=round(defaults, 3),
        machine_end=machine(),
    )
    summary(
        f"idle CPU of the hub with {args.sessions} idle forked sessions",
        [
            f"death detection only:  {watch['cpu']:6.2f} % of a core "
            f"({poll_ms:.2f} ms CPU per 1 s poll interval)",
            f"+ memory every {args.memory_interval:g} s: {sample['cpu']:6.2f} % "
            f"({1000 * round_s:.1f} ms CPU per sampling round)",
            f"idle at defaults (poll 1 s, memory 30 s, derived): {defaults:.2f} % of a core "
            "(target <= 5 %)",
            f"ping to a random session after the window: p50 {watch['p50']:.2f} / "
            f"{sample['p50']:.2f} ms, p99 {watch['p99']:.2f} / {sample['p99']:.2f} ms "
            "(watch / sample hub)",
        ],
    )


if __name__ == "__main__":
    asyncio.run(main())
