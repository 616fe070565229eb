"""Memory of idle sessions: USS and PSS per worker, forked and cold, and how many fit.

Starts ``--forked`` sessions on a fork-server hub and ``--cold`` sessions on a plain
local hub, pings each, waits ``--settle`` seconds, then reads every worker's
``memory_full_info()`` (USS: memory only that process holds; PSS: its fair share of
shared pages). For forked workers the template's own USS is counted once in the
budget: sessions that fit = (budget - template RSS) / median worker USS (the template's
RSS is the memory all forked workers share; its own USS undercounts it). With
``--compute-points N`` each session first runs a small ``run_compute`` (a used session,
whose touched pages were copied), instead of staying as started.

    python benchmarks/memory.py [--forked 32 --cold 4 --budget-gib 8]
    python benchmarks/memory.py --url URL --hub-pid PID     # a running hub on this machine

Reading another process's USS/PSS needs the same user as the hub (or root).
"""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

import psutil
from common import Hub, emit, local_hub, machine, parser, summary

MIB = 1024 * 1024


def workers_of(hub_pid: int) -> tuple[list[psutil.Process], psutil.Process | None]:
    """The hub's worker processes, and its fork server (if any)."""
    template = None
    workers = []
    for p in psutil.Process(hub_pid).children(recursive=True):
        cmd = " ".join(p.cmdline())
        if p.name() == "phoebe-spare":
            continue  # a fork server's spare, waiting for a request: no session's worker
        if "phoebe_kernel_worker.forkserver" in cmd:
            if p.ppid() == hub_pid:
                template = p
            else:
                workers.append(p)  # forked children keep the template's command line
        elif "phoebe_kernel_worker" in cmd:
            workers.append(p)
    return workers, template


async def measure(
    hub: Hub, pid: int, n: int, settle: float, label: str, budget: int, points: int
) -> dict[str, Any]:
    sids = []
    for _ in range(n):
        sids.append(await hub.start())
    for sid in sids:
        await hub.send(sid, "ping")
        if points:
            times = [i / points for i in range(points)]
            await hub.send(sid, "add_dataset", kind="lc", compute_times=times, overwrite=True)
            await hub.send(sid, "run_compute")
    await asyncio.sleep(settle)
    try:
        workers, template = workers_of(pid)
        infos = [w.memory_full_info() for w in workers]
        t_info = template.memory_full_info() if template else None
    finally:
        await asyncio.gather(*(hub.end(s) for s in sids))
    uss = statistics.median(i.uss for i in infos) / MIB
    pss = statistics.median(i.pss for i in infos) / MIB
    rss = statistics.median(i.rss for i in infos) / MIB
    t_uss = t_info.uss / MIB if t_info else 0.0
    t_rss = t_info.rss / MIB if t_info else 0.0
    fit = int((budget / MIB - t_rss) // uss)
    return emit(
        "memory",
        label,
        sessions=len(infos),
        uss_mib=round(uss, 1),
        pss_mib=round(pss, 1),
        rss_mib=round(rss, 1),
        template_uss_mib=round(t_uss, 1),
        template_pss_mib=round(t_info.pss / MIB, 1) if t_info else None,
        template_rss_mib=round(t_rss, 1),
        compute_points=points,
        budget_gib=round(budget / 1024**3, 2),
        sessions_that_fit=fit,
    )


async def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--hub-pid", type=int, help="the pid of the hub at --url")
    p.add_argument("--forked", type=int, default=32)
    p.add_argument("--cold", type=int, default=4)
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--budget-gib", type=float, default=8.0)
    p.add_argument("--compute-points", type=int, default=0)
    args = p.parse_args()
    budget = int(args.budget_gib * 1024**3)
    emit("memory", "machine", **machine())
    rows = []
    if args.url:
        if not args.hub_pid:
            p.error("--hub-pid is needed with --url (worker memory is read from /proc)")
        async with Hub(args.url, args.token, args.hub_pid) as hub:
            rows.append(
                await measure(
                    hub,
                    args.hub_pid,
                    args.forked,
                    args.settle,
                    "given",
                    budget,
                    args.compute_points,
                )
            )
    else:
        for label, spawner, n in (
            ("forked", "local-forkserver", args.forked),
            ("cold", "local", args.cold),
        ):
            if n <= 0:
                continue
            with local_hub(spawner=spawner) as (url, pid):
                async with Hub(url, None, pid) as hub:
                    if spawner == "local-forkserver":
                        await hub.end(await hub.start())  # wait for the template to load
                    rows.append(
                        await measure(hub, pid, n, args.settle, label, budget, args.compute_points)
                    )
    summary(
        "memory per idle session",
        [
            f"{r['case']:6s} {r['sessions']:3d} sessions: USS {r['uss_mib']:6.1f} MiB, PSS "
            f"{r['pss_mib']:6.1f} MiB, RSS {r['rss_mib']:6.1f} MiB (template USS "
            f"{r['template_uss_mib']}, RSS {r['template_rss_mib']} MiB) -> "
            f"{r['sessions_that_fit']} fit in "
            f"{r['budget_gib']} GiB of USS"
            for r in rows
        ],
    )


if __name__ == "__main__":
    asyncio.run(main())
