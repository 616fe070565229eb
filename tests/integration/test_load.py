"""Bounded load: many session lifecycles leave nothing behind.

200 sequential start -> ping -> end cycles against an in-process hub with real worker
processes: afterwards no zombie or orphaned process, every slot free again, and the
hub's open file descriptors back at their baseline.
"""

from __future__ import annotations

import gc
import os

import psutil

from ..waiting import async_wait_for

CYCLES = 200


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def zombies() -> list[int]:
    return [
        p.pid
        for p in psutil.Process().children(recursive=True)
        if p.status() == psutil.STATUS_ZOMBIE
    ]


async def test_two_hundred_lifecycles_leave_nothing_behind(make_hub):
    app, client = await make_hub()

    async def cycle() -> None:
        resp = await client.post("/dash/start-session", {})
        assert resp.status == 200, resp.body
        sid = resp.json()["session_id"]
        assert (await client.send(sid, "ping")).json()["success"] is True
        assert (await client.post(f"/dash/end-session/{sid}")).status == 200

    await cycle()  # warm up: connection pool, lazily opened files
    others = {p.pid for p in psutil.Process().children(recursive=True)}  # e.g. a test database
    gc.collect()
    baseline = open_fds()
    for _ in range(CYCLES):
        await cycle()
    await async_wait_for(lambda: app.manager.sessions == {}, "the last session to end")
    status = (await client.get("/dash/port-status")).json()
    assert status["reserved_ports"] == 0 and status["available_ports"] == status["total_ports"]
    await async_wait_for(lambda: not zombies(), "no zombie process", timeout=5)
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= others
    gc.collect()
    await async_wait_for(
        lambda: open_fds() <= baseline, f"open files back to {baseline}", timeout=5
    )
    await app.store.flush_commands()
    rows = await app.store.list_sessions(limit=CYCLES + 10)
    assert len(rows) == CYCLES + 1 and {r["status"] for r in rows} == {"stopped"}
