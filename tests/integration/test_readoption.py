"""Re-adoption after a hub restart (``stop_workers_on_shutdown = False``, recovery.py) of workers
that are alive but do not answer, or are busy with the previous hub's command.

docs/architecture.md ("Restarts"): a worker is re-adopted only if it is alive *and*
answers a signed status request; otherwise its session is marked failed. The code's
reason for an alive worker that does not answer within ``recover_ping_timeout`` is
"worker did not answer after the hub restarted", and the worker is stopped (no orphan).
A command still running for the previous hub is interrupted, so the next command runs;
a worker that ignores that interrupt for ``interrupt_grace`` is declared hung and stopped.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psutil
import pytest

from ..conftest import Client
from ..processes import gone, sigint_blocked
from ..waiting import async_wait_for

NO_ANSWER = "worker did not answer after the hub restarted"


async def start(client: Client) -> str:
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 200, resp.body
    sid: str = resp.json()["session_id"]
    return sid


@pytest.mark.parametrize("backend", ["local", "local-forkserver"])
async def test_a_stopped_worker_is_failed_with_the_reason_and_killed(make_hub, tmp_path, backend):
    data = tmp_path / "shared"
    config: dict[str, Any] = {"PhoebeSpawnerApp__spawner_class": backend}
    app1, client1 = await make_hub(
        data_dir=data, SessionManager__stop_workers_on_shutdown=False, **config
    )
    sid = await start(client1)
    answering = await start(client1)
    proc = psutil.Process(app1.manager.sessions[sid].spawner.pid)
    other = psutil.Process(app1.manager.sessions[answering].spawner.pid)
    await app1.cleanup()  # both workers are left running for re-adoption
    proc.suspend()  # alive (same pid and start time), but it answers nothing
    try:
        app2, client2 = await make_hub(
            data_dir=data, SessionManager__recover_ping_timeout=0.5, **config
        )
        listed = (await client2.get("/dash/sessions")).json()
        assert listed[sid]["status"] == "failed" and listed[sid]["reason"] == NO_ANSWER
        resp = await client2.send(sid, "ping")
        assert resp.status == 410 and resp.detail == f"Session {sid} has failed: {NO_ANSWER}"
        row = await app2.store.get_session(sid)
        assert row["status"] == "failed" and row["termination_reason"] == NO_ANSWER
        # no orphan: the hub stopped the worker it gave up on
        await async_wait_for(lambda: gone(proc), "the stopped worker to be killed", timeout=10)
        assert (await app2.store.get_session(sid))["spawner_state"] == {}
        # the answering worker beside it was re-adopted as usual
        assert listed[answering]["status"] == "running"
        assert app2.manager.sessions[answering].readopted
        assert (await client2.send(answering, "ping")).json()["result"] == {"status": "ready"}
        assert (await client2.post(f"/dash/end-session/{answering}")).status == 200
        await async_wait_for(lambda: gone(other), "the other worker to exit", timeout=10)
    finally:
        if not gone(proc):
            proc.resume()
            proc.kill()


async def test_a_busy_worker_is_readopted_and_its_orphaned_command_interrupted(
    make_hub, tmp_path, monkeypatch, capsys
):
    data = tmp_path / "shared"
    app1, client1 = await make_hub(data_dir=data, SessionManager__stop_workers_on_shutdown=False)
    sid = await start(client1)
    await client1.send(sid, "set_value", twig="kept", value=7)
    pid = app1.manager.sessions[sid].spawner.pid
    orphan = asyncio.ensure_future(client1.send(sid, "sleep", seconds=600))
    await async_wait_for(
        lambda: app1.manager.sessions[sid].in_flight == 1, "the command to be in flight", timeout=10
    )
    await app1.cleanup()
    await asyncio.gather(orphan, return_exceptions=True)  # its hub is gone: no answer
    # the new hub's log from its first line (it configures its own handler, on stderr)
    monkeypatch.setenv("PHOEBE_SPAWNER_TEST_DEBUG", "1")
    capsys.readouterr()
    app2, client2 = await make_hub(data_dir=data, SessionManager__command_timeout=20)
    log = capsys.readouterr().err.splitlines()
    assert app2.manager.sessions[sid].readopted
    assert app2.manager.sessions[sid].spawner.pid == pid
    orphan_line = f" PhoebeSpawnerApp] interrupting an orphaned sleep in session {sid}"
    assert [line for line in log if line.endswith(orphan_line)] != [], log
    # the next command runs at once, not behind the orphaned 600 s sleep
    resp = await client2.send(sid, "get_value", twig="kept")
    assert resp.status == 200 and resp.json() == {"success": True, "result": 7}
    assert (await client2.post(f"/dash/end-session/{sid}")).status == 200
    await async_wait_for(lambda: not psutil.pid_exists(pid), "the worker to exit", timeout=10)


async def test_a_readopted_worker_that_ignores_the_orphans_interrupt_is_failed_and_stopped(
    make_hub, tmp_path
):
    data = tmp_path / "shared"
    app1, client1 = await make_hub(data_dir=data, SessionManager__stop_workers_on_shutdown=False)
    sid = await start(client1)
    proc = psutil.Process(app1.manager.sessions[sid].spawner.pid)
    orphan = asyncio.ensure_future(client1.send(sid, "hang"))
    await async_wait_for(
        lambda: sigint_blocked(proc.pid), "the worker to block SIGINT in hang", timeout=10
    )
    await app1.cleanup()
    await asyncio.gather(orphan, return_exceptions=True)  # its hub is gone: no answer
    app2, client2 = await make_hub(data_dir=data, SessionManager__interrupt_grace=0.5)
    s = app2.manager.sessions[sid]
    reason = "worker hung: 'hang' ignored an interrupt for 0.5 s"
    assert (s.status, s.reason, s.readopted) == ("failed", reason, False)
    row = await app2.store.get_session(sid)
    assert (row["status"], row["termination_reason"]) == ("failed", reason)
    await async_wait_for(lambda: gone(proc), "the hung worker to be stopped", timeout=10)
    resp = await client2.send(sid, "ping")
    assert resp.status == 410 and reason in resp.detail
