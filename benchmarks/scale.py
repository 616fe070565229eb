"""The scale run: one hub growing to N live sessions, and what each N costs it (issue 17).

For N in ``--sizes`` (default 1,100,300,1000) the same hub grows to N live sessions,
started through the API ``--concurrency`` at a time (each start timed from the request
to the first ``ping`` it answers; one warm-up start before, not counted). At each N it
reports:

* start p50/p90 of the starts that took it from the previous N to N, and of
  ``--sequential`` (20) starts one after another at N, each ended again before the next;
* ping p50/p99 of ``--pings`` (500) sequential pings, each to a session drawn at random
  from the live ones, and ping p50(N) / ping p50(1) (the first size's, whatever it is);
  then as many to one session (``ping_one_session``): the hub's own per-command cost at
  N, without the cost of waking a different, cache-cold worker each time;
* the hub's RSS, threads and open file descriptors, and its CPU over ``--idle-seconds``
  (30) with nothing asked of it, in % of one core (its own ``cpu_times``, not its
  children's), and the idle workers' CPU over the same seconds, all together (what N
  idle sessions cost the machine; the fork server's spares are not workers).

At the end every session is ended one after another (end p50/p90; the answer comes
before the worker has exited), then it counts what is left, again every 0.2 s until
nothing is or ``--settle`` seconds passed (and says how long that took): worker
processes, session and runtime directories, cgroup groups of sessions under the hub's
trees (cpu, memory), and listening ports the workers had. A start that fails (the
status and body of the first failure are reported) ends the growth: the run measures
the N it reached, then goes on to the end and the summary; it never raises.

    python benchmarks/scale.py [--sizes 1,100,300,1000] [--concurrency 8]
    python benchmarks/scale.py --url URL --hub-pid PID [--data-dir DIR]   # a running hub

The targets of issue 17 are printed beside the numbers (they are not asserted): ping
p50(N) <= 1.3 x ping p50(1), start p50 <= 50 ms, idle CPU <= 5 % of a core, end p50
<= 20 ms, nothing left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
from common import Hub, emit, local_hub, machine, parser, percentiles, summary

from phoebe_kernel_worker.spares import SPARE_NAME

PING = orjson.dumps({"command": "ping"})

#: issue 17's targets, printed beside the numbers
TARGETS = {
    "ping_ratio": 1.3,  # ping p50(N) / ping p50(1)
    "start_p50_ms": 50.0,
    "idle_cpu_percent": 5.0,
    "end_p50_ms": 20.0,
}


class StartFailed(Exception):
    """A start (or its first ping) answered with something other than 200."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status} {body}")
        self.status = status
        self.body = body


async def request(hub: Hub, path: str, body: bytes = b"{}") -> tuple[int, bytes]:
    """POST ``body`` to ``path``: ``(status, body)``; a transport error is status 0."""
    assert hub.http is not None
    try:
        async with hub.http.post(
            hub.url + path, data=body, timeout=aiohttp.ClientTimeout(total=600)
        ) as resp:
            return resp.status, await resp.read()
    except (aiohttp.ClientError, TimeoutError) as e:
        return 0, f"{type(e).__name__}: {e}".encode()


async def start_and_ping(hub: Hub) -> tuple[str, float]:
    """Start a session and ping it; ``(id, seconds from the request to the pong)``."""
    t0 = time.perf_counter()
    status, body = await request(hub, "/dash/start-session")
    if status != 200:
        raise StartFailed(status, body[:500].decode(errors="replace"))
    sid = str(orjson.loads(body)["session_id"])
    status, body = await request(hub, f"/send/{sid}", PING)
    if status != 200 or not orjson.loads(body).get("success"):
        raise StartFailed(status, "first ping: " + body[:500].decode(errors="replace"))
    return sid, time.perf_counter() - t0


class Run:
    """One scale run against one hub: its live sessions and what was measured."""

    def __init__(self, hub: Hub, pid: int | None, data_dir: str | None, args: Any) -> None:
        self.hub = hub
        self.proc: psutil.Process | None = None
        with contextlib.suppress(psutil.Error):
            self.proc = psutil.Process(pid) if pid else None
        self.data_dir = data_dir
        self.args = args
        self.live: list[str] = []
        self.failure: dict[str, Any] | None = None
        self.rows: list[dict[str, Any]] = []
        self.worker_ports: set[int] = set()

    async def grow(self, n: int) -> list[float]:
        """Start sessions until ``n`` are live (``--concurrency`` at a time); the times of
        these starts. Stops at the first failure (kept in :attr:`failure`)."""
        todo = n - len(self.live)
        times: list[float] = []
        queue = iter(range(todo))

        async def starter() -> None:
            for _ in queue:
                if self.failure is not None:
                    return
                try:
                    sid, seconds = await start_and_ping(self.hub)
                except StartFailed as e:
                    if self.failure is None:
                        self.failure = {
                            "status": e.status,
                            "body": e.body,
                            "live": len(self.live),
                            "hub_log": self.hub_log_error(),
                        }
                    return
                self.live.append(sid)
                times.append(seconds)

        await asyncio.gather(*(starter() for _ in range(self.args.concurrency)))
        if self.failure is not None:
            self.failure["live_after"] = len(self.live)
        return times

    async def sequential_starts(self, count: int) -> list[float]:
        """``count`` starts one after another, each ended (outside the timing) before the next."""
        times = []
        for _ in range(count):
            try:
                sid, seconds = await start_and_ping(self.hub)
            except StartFailed as e:
                emit("scale", "sequential_start_failed", live=len(self.live), error=str(e)[:300])
                break
            times.append(seconds)
            await request(self.hub, f"/dash/end-session/{sid}")
        return times

    async def pings(self, count: int, same: bool = False) -> tuple[list[float], int]:
        """``count`` sequential pings, each to a random live session (``same``: all to one
        of them); (times, failures)."""
        rng = random.Random(count + len(self.live))
        times, failed = [], 0
        one = rng.choice(self.live)
        for _ in range(count):
            sid = one if same else rng.choice(self.live)
            t0 = time.perf_counter()
            status, _ = await request(self.hub, f"/send/{sid}", PING)
            if status == 200:
                times.append(time.perf_counter() - t0)
            else:
                failed += 1
        return times, failed

    async def idle_cpu(self, seconds: float) -> tuple[float | None, float | None]:
        """The hub's own CPU (user + system, children excluded) and its idle workers'
        together, over ``seconds`` of no requests, in % of one core."""
        if self.proc is None:
            return None, None
        workers = self.workers()
        try:
            before, t0 = self.proc.cpu_times(), time.monotonic()
            workers_before = _cpu_of(workers)
            await asyncio.sleep(seconds)
            after, wall = self.proc.cpu_times(), time.monotonic() - t0
        except psutil.Error:  # the hub is gone
            return None, None
        used = (after.user - before.user) + (after.system - before.system)
        workers_used = _cpu_of(workers, workers_before)
        return round(100 * used / wall, 2), round(100 * workers_used / wall, 2)

    def hub_stats(self) -> dict[str, Any]:
        """The hub's RSS (MiB), threads and open file descriptors, and its worker count."""
        if self.proc is None:
            return {}
        try:
            with self.proc.oneshot():
                stats = {
                    "rss_mib": round(self.proc.memory_info().rss / 2**20, 1),
                    "threads": self.proc.num_threads(),
                    "fds": self.proc.num_fds(),
                }
        except psutil.Error as e:  # the hub is gone
            return {"hub_error": f"{type(e).__name__}: {e}"}
        stats["workers"] = len(self.workers())
        return stats

    def workers(self) -> list[psutil.Process]:
        """The hub's worker processes: its descendants but the fork server's template and
        its spares (children named ``phoebe-spare`` that wait for a session: the fork
        server's, kept while the hub runs, so not leftovers)."""
        if self.proc is None:
            return []
        out = []
        try:
            children = self.proc.children(recursive=True)
        except psutil.Error:  # the hub is gone
            return []
        for p in children:
            try:
                cmd = " ".join(p.cmdline())
                template = "phoebe_kernel_worker.forkserver" in cmd and p.ppid() == self.proc.pid
                spare = p.name() == SPARE_NAME
                if "phoebe_kernel_worker" in cmd and not template and not spare:
                    out.append(p)
            except psutil.Error:
                continue
        return out

    def listening_ports(self, pids: set[int]) -> set[int]:
        """TCP ports in LISTEN held by processes ``pids`` (the workers' ZMQ sockets)."""
        if not pids:
            return set()
        ports = set()
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.pid in pids and conn.laddr:
                ports.add(conn.laddr.port)
        return ports

    def hub_log_error(self) -> str | None:
        """The hub log's first line naming an error (a local hub's log, if readable)."""
        if not self.data_dir:
            return None
        try:
            with open(Path(self.data_dir) / "hub.log", errors="replace") as log:
                for line in log:
                    if "Error" in line or "error" in line:
                        return line.strip()[:500]
        except OSError:
            return None
        return None

    async def measure(self, n: int, grow_times: list[float], ping1: float | None) -> float:
        """The measurements at ``n`` live sessions; returns this ping p50 (ms)."""
        stats = self.hub_stats()
        self.worker_ports |= self.listening_ports({p.pid for p in self.workers()})
        cpu, workers_cpu = await self.idle_cpu(self.args.idle_seconds)
        ping_times, ping_failed = await self.pings(self.args.pings)
        same_times, _ = await self.pings(self.args.pings, same=True)
        seq = await self.sequential_starts(self.args.sequential) if not self.failure else []
        ping = percentiles(ping_times)
        base = ping1 if ping1 is not None else ping.get("p50_ms")
        ratio = round(ping["p50_ms"] / base, 3) if ping and base else None
        row = emit(
            "scale",
            f"n={n}",
            live=len(self.live),
            start_growth=percentiles(grow_times),
            start_sequential=percentiles(seq),
            ping=ping,
            ping_failed=ping_failed,
            ping_p50_over_n1=ratio,
            ping_one_session=percentiles(same_times),
            idle_cpu_percent=cpu,
            workers_idle_cpu_percent=workers_cpu,
            idle_seconds=self.args.idle_seconds,
            load=[round(x, 2) for x in os.getloadavg()],
            **stats,
        )
        self.rows.append(row)
        return float(ping["p50_ms"]) if ping else 0.0

    async def end_all(self) -> dict[str, Any]:
        """End every live session one after another; the end times and what is left."""
        times, failed = [], []
        ports = self.worker_ports | self.listening_ports({p.pid for p in self.workers()})
        for sid in self.live:
            t0 = time.perf_counter()
            status, body = await request(self.hub, f"/dash/end-session/{sid}")
            if status == 200:
                times.append(time.perf_counter() - t0)
            else:
                failed.append(f"{status} {body[:200].decode(errors='replace')}")
        ended = len(self.live)
        self.live = []
        left = await self.leftovers(ports)
        return emit(
            "scale",
            "end",
            ended=ended,
            end=percentiles(times),
            end_failed=len(failed),
            first_end_failure=failed[0] if failed else None,
            leftovers=left,
        )

    async def leftovers(self, ports: set[int]) -> dict[str, Any]:
        """What the ended sessions left: counted until nothing is, for at most ``--settle``
        seconds (end-session answers before the worker has exited, and the directories
        and cgroups go after it); ``settled_s`` is how long that took."""
        t0 = time.monotonic()
        while True:
            left = self.count_left(ports)
            counted = [v for k, v in left.items() if k != "worker_ports_checked" and v]
            if not any(counted) or time.monotonic() - t0 > self.args.settle:
                break
            await asyncio.sleep(0.2)
        left["settled_s"] = round(time.monotonic() - t0, 1)
        return left

    def count_left(self, ports: set[int]) -> dict[str, Any]:
        """Worker processes, session and runtime directories, session cgroups and listening
        worker ports there are now."""
        left: dict[str, Any] = {"worker_processes": len(self.workers()) if self.proc else None}
        if self.data_dir:
            data = Path(self.data_dir)
            sessions = data / "sessions"
            left["session_dirs"] = sum(
                1 for user in sessions.glob("*") if user.is_dir() for _ in user.iterdir()
            )
            runtime = data / "runtime"
            left["runtime_dirs"] = sum(
                1 for d in runtime.glob("*") if d.is_dir() and d.name != "forkserver"
            )
            left["cgroup_dirs"] = cgroup_leftovers(self.data_dir)
        open_ports = {
            c.laddr.port
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr
        }
        left["worker_ports_listening"] = len(ports & open_ports)
        left["worker_ports_checked"] = len(ports)
        return left


def _cpu_of(procs: list[psutil.Process], before: dict[int, float] | None = None) -> Any:
    """Without ``before``: each process's CPU seconds (user + system) by pid. With it: the
    seconds all of them used since (a process gone meanwhile counts as none)."""
    now: dict[int, float] = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            now[p.pid] = t.user + t.system
    if before is None:
        return now
    return sum(now[pid] - before[pid] for pid in now if pid in before)


def cgroup_leftovers(data_dir: str) -> int | None:
    """Session groups (``s-*``) left in the hub's cgroup trees (cpu and memory), or None
    when this machine has neither hierarchy. The trees sit under this process's own
    group, which the hub inherited (the default ``cpu_cgroup_parent``)."""
    from phoebe_spawner.sessions.cpu import hierarchy, tree_name

    count: int | None = None
    for controller in ("cpu", "memory"):
        where = hierarchy(controller)
        if where is None:
            continue
        mount, own, _ = where
        tree = mount / own.lstrip("/") / tree_name(data_dir)
        count = (count or 0) + sum(1 for _ in tree.glob("s-*"))
    return count


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def summary_lines(run: Run, end: dict[str, Any]) -> list[str]:
    """The summary table: one line per N, then the end, the leftovers and any failure."""
    lines = [
        f"{'N':>6} {'live':>5} {'start p50/p90 (grow)':>21} {'start p50/p90 (seq)':>20} "
        f"{'ping p50/p99':>15} {'ratio':>6} {'one p50':>8} {'RSS MiB':>8} {'thr':>4} {'fds':>6} "
        f"{'idle CPU%':>9} {'workers CPU%':>12}"
    ]

    def pair(st: dict[str, Any]) -> str:
        return f"{st['p50_ms']:.1f}/{st['p90_ms']:.1f}" if st else "-"

    for row in run.rows:
        ping = row["ping"]
        pings = f"{ping['p50_ms']:.2f}/{ping['p99_ms']:.2f}" if ping else "-"
        lines.append(
            f"{row['case'][2:]:>6} {row['live']:>5} {pair(row['start_growth']):>21} "
            f"{pair(row['start_sequential']):>20} {pings:>15} "
            f"{row['ping_p50_over_n1'] or 0:>6.2f} "
            f"{(row['ping_one_session'] or {}).get('p50_ms', 0):>8.2f} "
            f"{row.get('rss_mib', 0):>8.1f} "
            f"{row.get('threads', 0):>4} {row.get('fds', 0):>6} "
            f"{row['idle_cpu_percent'] if row['idle_cpu_percent'] is not None else '-':>9} "
            f"{_or_dash(row.get('workers_idle_cpu_percent')):>12}"
        )
    if run.rows:
        last = run.rows[-1]
        seq = last["start_sequential"] or last["start_growth"]
        checks = [
            ("ping p50(N)/p50(1)", last["ping_p50_over_n1"], TARGETS["ping_ratio"], "x"),
            ("start p50 at N", seq.get("p50_ms") if seq else None, TARGETS["start_p50_ms"], "ms"),
            ("idle CPU", last["idle_cpu_percent"], TARGETS["idle_cpu_percent"], "% of a core"),
            ("end p50", end["end"].get("p50_ms"), TARGETS["end_p50_ms"], "ms"),
        ]
        lines.append(f"targets at N = {last['live']} (issue 17):")
        for name, value, target, unit in checks:
            verdict = "-" if value is None else "meets" if value <= target else "MISSES"
            lines.append(f"  {name:20s} {value!s:>8} {unit}  target <= {target:g}: {verdict}")
    st = end["end"]
    lines.append(
        f"end {end['ended']} sessions one after another: p50 {st.get('p50_ms', '-')} ms, "
        f"p90 {st.get('p90_ms', '-')} ms, failed {end['end_failed']}"
    )
    left = end["leftovers"]
    uncounted = ("worker_ports_checked", "settled_s")
    total = sum(v for k, v in left.items() if isinstance(v, int) and k not in uncounted)
    lines.append(
        f"leftovers (target 0): {total} - "
        + ", ".join(f"{k} {v}" for k, v in left.items() if k not in uncounted)
        + f" (of {left['worker_ports_checked']} worker ports seen), after "
        + f"{left['settled_s']} s"
    )
    if run.failure:
        f = run.failure
        lines.append(
            f"a start FAILED with {f['live']} live ({f.get('live_after', f['live'])} once the "
            f"starts in flight were done): {f['status']} {f['body'][:200]}"
            + (f"; hub log: {f['hub_log'][:200]}" if f.get("hub_log") else "")
        )
    return lines


async def scale(hub: Hub, pid: int | None, data_dir: str | None, args: Any) -> list[str]:
    run = Run(hub, pid, data_dir, args)
    ping1: float | None = None
    end: dict[str, Any] = {"ended": 0, "end": {}, "end_failed": 0, "leftovers": {}}
    try:
        # one start not counted (a warm-up): a fork server's template may still be loading PHOEBE
        sid, seconds = await start_and_ping(hub)
        await request(hub, f"/dash/end-session/{sid}")
        emit("scale", "warmup_start", ms=round(1000 * seconds, 1))
        for n in sorted(int(s) for s in args.sizes.split(",")):
            grow_times = await run.grow(n)
            if not run.live:
                break
            p50 = await run.measure(len(run.live) if run.failure else n, grow_times, ping1)
            ping1 = p50 if ping1 is None else ping1
            if run.failure:
                emit("scale", "start_failed", **run.failure)
                break
    except StartFailed as e:  # the warm-up start
        run.failure = {"status": e.status, "body": e.body, "live": 0, "hub_log": None}
        emit("scale", "start_failed", **run.failure)
    except Exception as e:  # report what was measured, then end what was started
        emit("scale", "error", error=f"{type(e).__name__}: {e}"[:500], live=len(run.live))
    end = await run.end_all()
    return summary_lines(run, end)


async def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1,100,300,1000", help="the N to measure at")
    p.add_argument("--concurrency", type=int, default=8, help="starts at once while growing")
    p.add_argument("--sequential", type=int, default=20, help="sequential starts at each N")
    p.add_argument("--pings", type=int, default=500, help="sequential pings at each N")
    p.add_argument("--idle-seconds", type=float, default=30.0)
    p.add_argument("--settle", type=float, default=30.0, help="grace for workers to exit")
    p.add_argument("--spawner", default="local-forkserver")
    p.add_argument("--max-sessions", type=int, help="default: the largest N + 50")
    p.add_argument("--hub-pid", type=int, help="the pid of the hub at --url (this machine)")
    p.add_argument("--data-dir", help="the data directory of the hub at --url (leftovers)")
    p.add_argument("--hub-arg", action="append", default=[], help="more hub options")
    args = p.parse_args()
    emit("scale", "machine", **machine())
    largest = max(int(s) for s in args.sizes.split(","))
    if args.url:
        async with Hub(args.url, args.token) as hub:
            lines = await scale(hub, args.hub_pid, args.data_dir, args)
    else:
        max_sessions = args.max_sessions or largest + 50
        extra = list(args.hub_arg)
        if os.geteuid() == 0 and args.spawner.startswith("local"):  # a uid per worker
            extra += [f"--LocalProcessSpawner.worker_uids=[64000,{64000 + max_sessions}]"]
        emit("scale", "config", spawner=args.spawner, max_sessions=max_sessions, extra=extra)
        with local_hub(spawner=args.spawner, max_sessions=max_sessions, extra=extra) as (
            url,
            pid,
        ):
            data_dir = next(
                a.split("=", 1)[1]
                for a in psutil.Process(pid).cmdline()
                if a.startswith("--data-dir=")
            )
            async with Hub(url, None, pid) as hub:
                lines = await scale(hub, pid, data_dir, args)
    summary("scale", lines)


if __name__ == "__main__":
    asyncio.run(main())
