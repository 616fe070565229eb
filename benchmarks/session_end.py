"""End-session latency: the answer of ``POST /dash/end-session/{id}``, and when the slot is free.

Starts ``--sessions`` sessions (each answers a ``ping``) and ends them, timing each
request (issue 17's target: p50 <= 20 ms) and how long after its answer the session has
left ``/dash/sessions`` and ``/dash/port-status`` shows its slot free (its worker reaped:
what the answer no longer waits for). Twice: ``one_at_a_time`` (each end once the one
before has freed its slot: one user ending a session) and ``back_to_back`` (the next end
right after the answer, so it shares the CPU with the workers still exiting).

    python benchmarks/session_end.py                          # a local-forkserver hub
    python benchmarks/session_end.py --spawner local          # cold workers
    python benchmarks/session_end.py --url URL [--token T]    # a running hub

To compare two trees in one sitting, run the same script from each (``local_hub``
starts the hub of the tree the script lives in) back to back and quote the ratio of the
p50s with the load printed by both.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from common import RESULTS, Hub, emit, local_hub, machine, parser, percentiles, summary

#: issue 17: end-session p50 within this (ms)
TARGET_P50_MS = 20.0


async def all_gone(hub: Hub, sids: set[str], live: int = 0, timeout: float = 120) -> float:
    """Seconds until none of ``sids`` is listed and at most ``live`` slots are reserved."""
    assert hub.http is not None
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        async with hub.http.get(hub.url + "/dash/sessions") as resp:
            listed = set(orjson.loads(await resp.read()))
        async with hub.http.get(hub.url + "/dash/port-status") as resp:
            reserved = orjson.loads(await resp.read())["reserved_ports"]
        if not listed & sids and reserved <= live:
            return time.perf_counter() - t0
        await asyncio.sleep(0.01)
    raise RuntimeError(f"sessions still listed or slots reserved after {timeout:g} s")


async def measure(hub: Hub, label: str, sessions: int) -> list[str]:
    sid = await hub.start()  # warm-up, not counted: a fork server may still load
    await hub.send(sid, "ping")
    await hub.end(sid)
    await all_gone(hub, {sid})
    lines = []
    for kind in ("one_at_a_time", "back_to_back"):
        sids = [await hub.start() for _ in range(sessions)]
        for sid in sids:
            await hub.send(sid, "ping")
        ends: list[float] = []
        freed: list[float] = []
        for i, sid in enumerate(sids):
            t0 = time.perf_counter()
            await hub.end(sid)
            ends.append(time.perf_counter() - t0)
            if kind == "one_at_a_time":  # the next end once this one's slot is free
                freed.append(await all_gone(hub, {sid}, live=len(sids) - i - 1))
        if kind == "back_to_back":
            freed.append(await all_gone(hub, set(sids)))
        row = emit("session_end", label, kind=kind, **percentiles(ends))
        slot = emit("session_end", label, kind=f"{kind}_slot_free", **percentiles(freed))
        lines.append(
            f"{label} {kind:13s}: end-session p50 {row['p50_ms']:7.1f} ms  "
            f"p90 {row['p90_ms']:7.1f} ms  max {row['max_ms']:7.1f} ms (n={row['n']}); "
            f"slot free p50 {slot['p50_ms']:7.1f} ms after the answer"
            + (" (after the last one)" if kind == "back_to_back" else "")
        )
    return lines


async def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--label", default=None, help="a name for this run (default: the spawner)")
    p.add_argument("--spawner", default="local-forkserver")
    p.add_argument("--sessions", type=int, default=50)
    args = p.parse_args()
    label = args.label or ("given" if args.url else args.spawner)
    emit("session_end", "machine", **machine())
    if args.url:
        async with Hub(args.url, args.token) as hub:
            lines = await measure(hub, label, args.sessions)
    else:
        max_sessions = max(100, 2 * args.sessions)
        # a loaded machine may take a while to load the fork server's template
        extra = ["--LocalProcessSpawner.start_timeout=300"]
        with local_hub(spawner=args.spawner, max_sessions=max_sessions, extra=extra) as (url, pid):
            async with Hub(url, None, pid) as hub:
                lines = await measure(hub, label, args.sessions)
    for row in RESULTS:
        if row.get("kind") == "one_at_a_time":
            ok = row["p50_ms"] <= TARGET_P50_MS
            lines.append(
                f"end-session p50 {row['p50_ms']:.1f} ms: "
                f"{'meets' if ok else 'MISSES'} the {TARGET_P50_MS:.0f} ms target"
            )
    summary("session end", lines)


if __name__ == "__main__":
    asyncio.run(main())
