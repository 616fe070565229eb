"""The compatible API's commands (``POST /send/{session_id}``): replies and command errors,
malformed and oversized requests, workers that die, time out or hang, and the order and
independence of commands; with real worker processes running the light test session.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from ..waiting import async_wait_for


async def test_send_success_and_command_errors(make_hub):
    _, client = await make_hub()
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    assert (await client.send(sid, "set_value", twig="period@binary", value=0.56)).json() == {
        "success": True,
        "result": {},
    }
    assert (await client.send(sid, "get_value", twig="period@binary")).json()["result"] == 0.56
    resp = await client.send(sid, "no_such_command")
    assert resp.status == 200 and resp.json() == {
        "success": False,
        "error": "API does not recognize command no_such_command.",
    }
    resp = await client.send(sid, "get_value", twig="missing")
    assert resp.status == 200 and resp.json()["success"] is False
    assert "traceback" not in resp.json()


async def test_traceback_only_in_debug(make_hub):
    _, client = await make_hub(PhoebeSpawnerApp__debug=True)
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    resp = await client.send(sid, "get_value", twig="missing")
    assert "Traceback" in resp.json()["traceback"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{bad", "Malformed JSON"),
        (b"[]", "JSON object"),
        (b'{"twig": 1}', "command"),
        (b"", "JSON"),
    ],
)
async def test_send_malformed(make_hub, body, fragment):
    _, client = await make_hub()
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    resp = await client.post(f"/send/{sid}", body=body)
    assert resp.status == 400 and fragment in resp.detail
    assert (await client.send(sid, "ping")).status == 200


async def test_send_oversize_is_413(make_hub):
    _, client = await make_hub(PhoebeSpawnerApp__max_body_size=1024 * 1024)
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    big = b'{"command": "echo", "x": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    resp = await client.post(f"/send/{sid}", body=big)
    assert resp.status == 413 and "exceeds the limit" in resp.detail
    assert (await client.send(sid, "ping")).status == 200


async def test_killed_worker_is_410_quickly(make_hub):
    app, client = await make_hub()
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    pid = app.manager.sessions[sid].spawner.pid
    os.kill(pid, signal.SIGKILL)
    await async_wait_for(
        lambda: app.manager.sessions[sid].status == "failed",
        "the killed worker's session to fail",
        timeout=3,
    )
    resp = await client.send(sid, "ping")  # answered from the recorded end: no worker to ask
    assert resp.status == 410 and "SIGKILL" in resp.detail
    listed = (await client.get("/dash/sessions")).json()[sid]
    assert listed["status"] == "failed" and "SIGKILL" in listed["reason"]
    row = await app.store.get_session(sid)
    assert row["status"] == "failed" and "SIGKILL" in row["termination_reason"]


async def test_worker_dying_mid_command_is_503(make_hub):
    _, client = await make_hub(SessionManager__command_timeouts={"crash": 3600})
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    resp = await client.send(sid, "crash", status=7)  # its exit ends the wait, not a timeout
    assert resp.status == 503 and "status 7" in resp.detail


async def test_timeout_is_504_and_session_survives(make_hub):
    app, client = await make_hub(SessionManager__command_timeouts={"sleep": 0.3})
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    resp = await client.send(sid, "sleep", seconds=30)
    assert resp.status == 504 and "interrupted" in resp.detail
    # answered only once the interrupted sleep has stopped: a worker still sleeping after
    # the interrupt grace (10 s) would be declared hung and this would be a 503
    resp = await client.send(sid, "echo", after="timeout")
    assert resp.json() == {"success": True, "result": {"after": "timeout"}}
    assert app.manager.sessions[sid].status == "running"


async def test_hung_worker_is_stopped_after_grace(make_hub):
    app, client = await make_hub(
        SessionManager__command_timeouts={"hang": 0.3}, SessionManager__interrupt_grace=0.5
    )
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    assert (await client.send(sid, "hang")).status == 504
    await async_wait_for(
        lambda: app.manager.sessions[sid].status == "failed", "the hung session to fail", timeout=15
    )
    resp = await client.send(sid, "ping")
    assert resp.status == 410 and "hung" in resp.detail


async def test_commands_to_one_session_run_in_order(make_hub):
    """Commands that arrive while the session is busy wait, then run one at a time in the
    order they arrived: checked in the worker, where each read sees the write before it."""
    app, client = await make_hub()
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    session = app.manager.sessions[sid]
    # a job holds the session until it is cancelled, so every /send below has to queue
    job = await client.post(f"/api/v1/sessions/{sid}/jobs", {"command": "sleep", "seconds": 600})
    assert job.status == 202
    await async_wait_for(lambda: session.in_flight == 1, "the job to hold the session")

    commands = []  # eight: with the cancel below, within the HTTP client's ten connections
    for i in range(4):
        commands += [("set_value", {"twig": "order", "value": i}), ("get_value", {"twig": "order"})]
    sends = []
    for n, (command, kwargs) in enumerate(commands, start=2):
        sends.append(asyncio.ensure_future(client.send(sid, command, **kwargs)))
        await async_wait_for(lambda n=n: session.in_flight == n, f"command {n} to queue")
    assert not any(send.done() for send in sends)  # all waiting behind the job

    cancel = await client.post(job.json()["links"]["cancel"])
    assert cancel.status == 200 and cancel.json()["status"] == "cancelled"
    replies = [(await send).json() for send in sends]
    assert all(reply["success"] for reply in replies), replies
    assert [reply["result"] for reply in replies[1::2]] == [0, 1, 2, 3]
    assert (await client.send(sid, "get_value", twig="order")).json()["result"] == 3


async def test_one_slow_session_does_not_delay_another(make_hub):
    app, client = await make_hub()
    slow = (await client.post("/dash/start-session", {})).json()["session_id"]
    fast = (await client.post("/dash/start-session", {})).json()["session_id"]
    # a command that runs until it is cancelled keeps the slow session busy throughout
    job = (
        await client.post(f"/api/v1/sessions/{slow}/jobs", {"command": "sleep", "seconds": 600})
    ).json()
    await async_wait_for(lambda: app.manager.sessions[slow].in_flight == 1, "the slow command")
    for _ in range(20):
        assert (await client.send(fast, "ping")).status == 200
    # all twenty answered while the other session was still busy
    assert (await client.get(job["links"]["self"])).json()["status"] == "running"
    cancel = await client.post(job["links"]["cancel"])
    assert cancel.status == 200 and cancel.json()["status"] == "cancelled"


async def test_long_client_strings_stay_out_of_the_log(make_hub, caplog):
    _, client = await make_hub()
    long_id = "x" * 5000
    with caplog.at_level("INFO"):
        assert (await client.send(long_id, "ping")).status == 404
    assert caplog.records and max(len(r.getMessage()) for r in caplog.records) < 1000
