"""How promptly the hub ends work it is asked to end, beside a ping measured in the same run.

    python benchmarks/interrupts.py [--rounds 10]

The tests check that these endings happen (a cancelled job, a 504 after which the session
still answers, a 503 naming the signal); how long they take is measured here instead, on a
hub of its own (local backend, the test worker, ``sleep`` timing out after 0.3 s):

* ``cancel`` - ``POST /api/v1/jobs/<id>/cancel`` of a running 60 s sleep, until its reply;
* ``timeout`` - ``/send`` of a 30 s sleep until its 504, less the 0.3 s timeout (the
  overshoot), and the ``/send`` ping right after it (the worker back at work);
* ``killed`` - SIGKILL of a session's worker until ``/send`` answers 503.

Each is printed in milliseconds and as a ratio to the median idle ping of the same run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import tempfile
import time
from typing import Any

import orjson
from common import Hub, emit, local_hub, machine, parser, percentiles, summary

TIMEOUT = 0.3
PING = b'{"command": "ping"}'


async def call(hub: Hub, path: str, body: bytes = b"{}", method: str = "POST") -> Any:
    """``(status, JSON body)`` of one request to the hub (any status)."""
    assert hub.http is not None
    async with hub.http.request(method, hub.url + path, data=body) as resp:
        return resp.status, orjson.loads(await resp.read())


async def until(check: Any, what: str, timeout: float = 30) -> None:
    """Poll the coroutine function ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def idle_ping(hub: Hub, sid: str, n: int = 200) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await hub.post(f"/send/{sid}", PING)
        out.append(time.perf_counter() - t0)
    return out


async def cancel_once(hub: Hub, sid: str) -> float:
    status, job = await call(
        hub, f"/api/v1/sessions/{sid}/jobs", orjson.dumps({"command": "sleep", "seconds": 60})
    )
    assert status == 202, job

    async def running() -> bool:
        return bool((await call(hub, job["links"]["self"], method="GET"))[1]["status"] == "running")

    await until(running, "the job to run")
    t0 = time.perf_counter()
    status, ended = await call(hub, job["links"]["cancel"])
    took = time.perf_counter() - t0
    assert status == 200, ended
    assert ended["status"] == "cancelled", ended
    return took


async def timeout_once(hub: Hub, sid: str) -> tuple[float, float]:
    body = orjson.dumps({"command": "sleep", "seconds": 30})
    t0 = time.perf_counter()
    status, reply = await call(hub, f"/send/{sid}", body)
    overshoot = time.perf_counter() - t0 - TIMEOUT
    assert status == 504, reply
    t1 = time.perf_counter()
    await hub.post(f"/send/{sid}", PING)
    return overshoot, time.perf_counter() - t1


async def killed_once(hub: Hub) -> float:
    sid = await hub.start()
    pid = int((await hub.send(sid, "whereami"))["pid"])
    t0 = time.perf_counter()
    os.kill(pid, signal.SIGKILL)

    async def refused() -> bool:
        return bool((await call(hub, f"/send/{sid}", PING))[0] == 503)

    await until(refused, "the 503")
    took = time.perf_counter() - t0
    await hub.end(sid)
    return took


async def run(hub: Hub, rounds: int) -> list[str]:
    sid = await hub.start()
    try:
        await idle_ping(hub, sid, 50)  # warm-up
        floor = statistics.median(await idle_ping(hub, sid))
        cancels = [await cancel_once(hub, sid) for _ in range(rounds)]
        timeouts = [await timeout_once(hub, sid) for _ in range(rounds)]
    finally:
        await hub.end(sid)
    killed = [await killed_once(hub) for _ in range(rounds)]
    cases = {
        "cancel": cancels,
        "timeout_overshoot": [o for o, _ in timeouts],
        "ping_after_timeout": [p for _, p in timeouts],
        "killed_to_503": killed,
    }
    emit("interrupts", "idle_ping", p50_ms=round(1000 * floor, 3))
    lines = [f"idle ping p50 {1000 * floor:.2f} ms (the floor of the ratios)"]
    for case, values in cases.items():
        stats = percentiles(values)
        ratio = stats["p50_ms"] / (1000 * floor)
        emit("interrupts", case, **stats, p50_over_idle_ping=round(ratio, 1))
        lines.append(
            f"{case}: p50 {stats['p50_ms']:.1f} ms, max {stats['max_ms']:.1f} ms "
            f"({ratio:.1f} x idle ping)"
        )
    return lines


async def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args()
    emit("interrupts", "machine", **machine())
    if args.url:  # run_all passes it to every script
        print("interrupts.py measures a hub of its own (it needs the test worker): --url ignored")
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as config:
        config.write(
            "c.LocalProcessSpawner.worker_args = "
            "['--session-factory', 'phoebe_kernel_worker.testing:test_session']\n"
            f"c.SessionManager.command_timeouts = {{'sleep': {TIMEOUT}}}\n"
        )
    try:
        with local_hub(spawner="local", extra=[f"--config={config.name}"]) as (url, pid):
            async with Hub(url, None, pid) as hub:
                lines = await run(hub, args.rounds)
    finally:
        os.unlink(config.name)
    summary("interrupts", lines)


if __name__ == "__main__":
    asyncio.run(main())
