"""Jobs and their event streams, with real worker processes.

The light test session's ``steps`` command reports progress through the same progress
bars PHOEBE's backends use and prints a line per step; the PHOEBE tests at the end
run real ``run_compute`` jobs.
"""

from __future__ import annotations

import asyncio
import gc
import os

import numpy as np
import pytest

from ..conftest import Client, register
from ..sse import SSEStream
from ..waiting import async_wait_for


async def start(client: Client, token: str | None = None) -> str:
    resp = await client.post("/dash/start-session", {}, token=token)
    assert resp.status == 200, resp.body
    return str(resp.json()["session_id"])


async def submit(client: Client, sid: str, command: str, token: str | None = None, **kw) -> dict:
    resp = await client.post(
        f"/api/v1/sessions/{sid}/jobs", {"command": command, **kw}, token=token
    )
    assert resp.status == 202, resp.body
    job = resp.json()
    assert resp.headers["Location"] == job["links"]["self"]
    return job


async def wait_job(
    client: Client, job_id: str, token: str | None = None, timeout: float = 60
) -> dict:
    """The job once it has ended (polled over HTTP)."""

    async def ended() -> dict | None:
        job: dict = (await client.get(f"/api/v1/jobs/{job_id}", token=token)).json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return await async_wait_for(ended, f"job {job_id} to end", timeout=timeout, interval=0.05)


async def test_job_lifecycle_events_and_result(make_hub):
    _, client = await make_hub()
    sid = await start(client)
    job = await submit(client, sid, "steps", n=10, delay=0.05)
    assert job["status"] in ("queued", "running") and job["command"] == "steps"
    stream = await SSEStream.open(client.base_url, job["links"]["events"])
    assert stream.status == 200 and stream.headers["content-type"].startswith("text/event-stream")
    events = await stream.events_until_end()
    await stream.close()
    ids = [e["id"] for e in events]
    assert ids == list(range(1, len(ids) + 1)), "ids must be contiguous from 1"
    types = [e["event"] for e in events]
    assert types[0] == "queued" and types[1] == "started" and types[-1] == "succeeded"
    progress = [e["data"]["fraction"] for e in events if e["event"] == "progress"]
    assert progress and progress == sorted(progress) and progress[-1] == 1.0
    lines = [e["data"]["line"] for e in events if e["event"] == "log"]
    assert lines == [f"step {i} of 10" for i in range(1, 11)]
    assert events[-1]["data"]["result_url"] == job["links"]["result"]
    done = (await client.get(job["links"]["self"])).json()
    assert (
        done["status"] == "succeeded"
        and done["progress"] == 1.0
        and done["last_event_id"] == ids[-1]
    )
    assert done["started_at"] >= done["created_at"] and done["finished_at"] >= done["started_at"]
    result = await client.get(job["links"]["result"])
    assert result.json() == {"success": True, "result": {"steps": 10}}


async def test_failed_job_keeps_the_error(make_hub):
    _, client = await make_hub()
    sid = await start(client)
    job = await wait_job(
        client, (await submit(client, sid, "steps", n=2, delay=0, fail=True))["job_id"]
    )
    assert job["status"] == "failed" and "failed after 2 steps" in job["error"]
    result = (await client.get(job["links"]["result"])).json()
    assert result["success"] is False and "failed after 2 steps" in result["error"]
    unknown = await wait_job(client, (await submit(client, sid, "no_such_command"))["job_id"])
    assert unknown["status"] == "failed" and "does not recognize" in unknown["error"]


async def test_reconnect_with_last_event_id_resumes_exactly(make_hub):
    _, client = await make_hub()
    sid = await start(client)
    job = await submit(client, sid, "steps", n=20, delay=0.05)
    first = await SSEStream.open(client.base_url, job["links"]["events"])
    seen = [await first.next_event() for _ in range(5)]
    await first.close()
    last = seen[-1]["id"]
    rest = await SSEStream.open(
        client.base_url, job["links"]["events"], headers={"Last-Event-ID": str(last)}
    )
    remaining = await rest.events_until_end()
    await rest.close()
    ids = [e["id"] for e in seen + remaining]
    assert ids == list(range(1, len(ids) + 1))
    assert remaining[-1]["event"] == "succeeded"
    # a finished job replays everything, also by query parameter
    replay = await SSEStream.open(client.base_url, job["links"]["events"] + "?from_beginning=true")
    assert [e["id"] for e in await replay.events_until_end()] == ids
    await replay.close()
    tail = await SSEStream.open(
        client.base_url, job["links"]["events"] + f"?last_event_id={ids[-2]}"
    )
    assert [e["id"] for e in await tail.events_until_end()] == ids[-1:]
    await tail.close()
    bad = await client.get(job["links"]["events"], headers={"Last-Event-ID": "x"})
    assert bad.status == 400


async def test_jobs_queue_in_order_and_limit_is_429(make_hub):
    _, client = await make_hub(JobManager__max_jobs_per_session=3)
    sid = await start(client)
    a = await submit(client, sid, "sleep", seconds=0.5)
    b = await submit(client, sid, "echo", n=2)
    c = await submit(client, sid, "echo", n=3)
    resp = await client.post(f"/api/v1/sessions/{sid}/jobs", {"command": "echo"})
    assert resp.status == 429 and "at most 3" in resp.detail
    assert (await client.get(b["links"]["self"])).json()["status"] == "queued"
    jobs = [await wait_job(client, j["job_id"]) for j in (a, b, c)]
    assert all(j["status"] == "succeeded" for j in jobs)
    assert (
        jobs[0]["finished_at"]
        <= jobs[1]["started_at"]
        <= jobs[1]["finished_at"]
        <= jobs[2]["started_at"]
    )
    # /send waits its turn behind a job, but ping is answered at once
    long = await submit(client, sid, "sleep", seconds=3)
    await wait_running(client, long["job_id"])
    assert (await client.send(sid, "ping")).json() == {
        "success": True,
        "result": {"status": "ready"},
    }
    assert (await client.get(long["links"]["self"])).json()["status"] == "running"  # still
    assert (await client.send(sid, "echo", after="job")).json()["result"] == {"after": "job"}
    assert (await client.get(long["links"]["self"])).json()["status"] == "succeeded"


async def test_cancel_running_and_queued_jobs(make_hub):
    _, client = await make_hub()
    sid = await start(client)
    running = await submit(client, sid, "sleep", seconds=30)
    queued = await submit(client, sid, "echo", x=1)
    await wait_running(client, running["job_id"])
    resp = await client.post(queued["links"]["cancel"])
    assert resp.status == 200 and resp.json()["status"] == "cancelled"
    resp = await client.post(running["links"]["cancel"])
    assert resp.status == 200 and resp.json()["status"] == "cancelled"
    ended = resp.json()
    assert ended["finished_at"] - ended["started_at"] < 30  # the sleep was cut short
    stream = await SSEStream.open(client.base_url, running["links"]["events"])
    events = await stream.events_until_end()
    await stream.close()
    assert events[-1]["event"] == "cancelled"
    assert (await client.post(running["links"]["cancel"])).status == 409
    assert (await client.send(sid, "echo", still="alive")).json()["result"] == {"still": "alive"}


async def wait_running(client: Client, job_id: str) -> None:
    """Return once the job is running (polled over HTTP)."""

    async def running() -> bool:
        return bool((await client.get(f"/api/v1/jobs/{job_id}")).json()["status"] == "running")

    await async_wait_for(running, f"job {job_id} to run")


async def test_jobs_are_private_and_listed(make_hub):
    _, client = await make_hub(auth_mode="jwt")
    alice = await register(client, "alice@example.org")
    bob = await register(client, "bob@example.org")
    sid = await start(client, alice)
    job = await submit(client, sid, "echo", token=alice, x=1)
    await wait_job(client, job["job_id"], alice)
    for path in (job["links"]["self"], job["links"]["result"], job["links"]["events"]):
        assert (await client.get(path, token=bob)).status == 404, path
    assert (await client.post(job["links"]["cancel"], token=bob)).status == 404
    assert (
        await client.post(f"/api/v1/sessions/{sid}/jobs", {"command": "echo"}, token=bob)
    ).status == 403
    assert (await client.get(job["links"]["self"])).status == 401
    for _ in range(4):
        await submit(client, sid, "echo", token=alice)
    listed = (await client.get("/api/v1/jobs?limit=2&offset=1", token=alice)).json()
    assert listed["total"] == 5 and len(listed["jobs"]) == 2 and listed["limit"] == 2
    by_session = (
        await client.get(
            f"/api/v1/jobs?session_id={sid}&status=succeeded,queued,running", token=alice
        )
    ).json()
    assert by_session["total"] == 5
    assert (await client.get("/api/v1/jobs", token=bob)).json()["total"] == 0
    assert (await client.get("/api/v1/jobs?status=bogus", token=alice)).status == 400
    assert (await client.get("/api/v1/jobs?limit=0", token=alice)).status == 400


async def test_job_bad_input(make_hub):
    _, client = await make_hub()
    sid = await start(client)
    assert (await client.post(f"/api/v1/sessions/{sid}/jobs", body=b"{bad")).status == 400
    assert (await client.post(f"/api/v1/sessions/{sid}/jobs", {"x": 1})).status == 400
    assert (await client.post("/api/v1/sessions/nope/jobs", {"command": "echo"})).status == 404
    assert (await client.get("/api/v1/jobs/nope")).status == 404
    job = await submit(client, sid, "sleep", seconds=1)
    resp = await client.get(job["links"]["result"])
    assert resp.status == 409 and "not ready" in resp.detail


async def test_fifty_subscribers_each_get_every_event(make_hub):
    _, client = await make_hub()
    sid = await start(client)
    job = await submit(client, sid, "steps", n=15, delay=0.04)
    streams = await asyncio.gather(
        *(SSEStream.open(client.base_url, job["links"]["events"]) for _ in range(50))
    )
    results = await asyncio.wait_for(asyncio.gather(*(s.events_until_end() for s in streams)), 60)
    for s in streams:
        await s.close()
    reference = [(e["id"], e["event"]) for e in results[0]]
    assert reference[-1][1] == "succeeded" and len(reference) >= 17
    assert all([(e["id"], e["event"]) for e in r] == reference for r in results)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_client_leaving_mid_stream_leaves_nothing_behind(make_hub):
    app, client = await make_hub(PhoebeSpawnerApp__sse_keepalive=0.2)
    sid = await start(client)
    job = await submit(client, sid, "sleep", seconds=30)
    await client.get("/health")  # warm the client's connection pool
    gc.collect()
    fds, tasks = open_fds(), len(asyncio.all_tasks())
    for _ in range(5):
        stream = await SSEStream.open(client.base_url, job["links"]["events"])
        assert (await stream.next_event())["event"] == "queued"
        await stream.close()
    user_stream = await SSEStream.open(client.base_url, "/api/v1/events")
    await asyncio.sleep(0.5)  # a few keep-alives go out
    await user_stream.close()
    job_log = app.jobs._live[job["job_id"]].log
    await async_wait_for(lambda: job_log.readers == 0, "the job log to have no reader", timeout=5)
    gc.collect()
    await async_wait_for(
        lambda: open_fds() <= fds and len(asyncio.all_tasks()) <= tasks,
        f"open files back to {fds} and tasks to {tasks}",
        timeout=5,
    )
    await client.post(job["links"]["cancel"])


async def test_keepalive_comments_on_idle_streams(make_hub):
    _, client = await make_hub(PhoebeSpawnerApp__sse_keepalive=0.1)
    stream = await SSEStream.open(client.base_url, "/api/v1/events")
    with pytest.raises(TimeoutError):  # comments only, no event
        await asyncio.wait_for(stream.next_event(), 0.5)
    assert stream.comments.count("keepalive") >= 2
    await stream.close()


async def test_user_event_stream(make_hub):
    _, client = await make_hub()
    stream = await SSEStream.open(client.base_url, "/api/v1/events")
    sid = await start(client)
    job = await wait_job(client, (await submit(client, sid, "echo"))["job_id"])
    await client.post(f"/dash/end-session/{sid}")
    got = [await stream.next_event() for _ in range(3)]
    await stream.close()
    assert [e["event"] for e in got] == ["session_started", "job_finished", "session_stopping"]
    assert got[0]["data"]["session_id"] == sid and got[1]["data"]["job_id"] == job["job_id"]
    assert [e["id"] for e in got] == [got[0]["id"], got[0]["id"] + 1, got[0]["id"] + 2]


async def test_streams_accept_the_login_cookie_writes_need_xsrf(make_hub):
    _, client = await make_hub(auth_mode="jwt")
    resp = await client.post(
        "/auth/register", {"email": "web@example.org", "password": "a browser pw"}
    )
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    pair = cookie.split(";", 1)[0]
    stream = await SSEStream.open(client.base_url, "/api/v1/events", headers={"Cookie": pair})
    assert stream.status == 200
    await stream.close()
    # the cookie alone is not enough for requests that change state (see test_admin)
    resp = await client.post("/dash/start-session", {}, headers={"Cookie": pair})
    assert resp.status == 403 and "XSRF" in resp.detail
    anonymous = await SSEStream.open(client.base_url, "/api/v1/events")
    assert anonymous.status == 401
    await anonymous.close()


async def test_session_end_cancels_queued_jobs(make_hub):
    _, client = await make_hub()
    sid = await start(client)
    running = await submit(client, sid, "sleep", seconds=30)
    queued = await submit(client, sid, "echo")
    await wait_running(client, running["job_id"])
    await client.post(f"/dash/end-session/{sid}")
    q = await wait_job(client, queued["job_id"])
    r = await wait_job(client, running["job_id"])
    assert q["status"] == "cancelled" and "session was stopping" in q["error"]
    assert r["status"] == "failed" and r["error"]


async def test_finished_jobs_survive_a_restart(make_hub, tmp_path):
    data = tmp_path / "shared"
    app1, client1 = await make_hub(data_dir=data)
    sid = await start(client1)
    done = await wait_job(client1, (await submit(client1, sid, "steps", n=5, delay=0.02))["job_id"])
    unfinished = await submit(client1, sid, "sleep", seconds=30)
    await wait_running(client1, unfinished["job_id"])
    stream = await SSEStream.open(client1.base_url, done["links"]["events"])
    before = await stream.events_until_end()
    await stream.close()
    await app1.cleanup()
    _, client2 = await make_hub(data_dir=data)
    again = (await client2.get(done["links"]["self"])).json()
    assert again["status"] == "succeeded" and again["last_event_id"] == before[-1]["id"]
    assert (await client2.get(done["links"]["result"])).json()["result"] == {"steps": 5}
    stream = await SSEStream.open(client2.base_url, done["links"]["events"])
    replay = await stream.events_until_end()
    await stream.close()
    assert [(e["id"], e["event"], e["data"]) for e in replay] == [
        (e["id"], e["event"], e["data"]) for e in before
    ]
    lost = (await client2.get(unfinished["links"]["self"])).json()
    assert lost["status"] in ("failed", "cancelled") and lost["error"]


# --- real PHOEBE ------------------------------------------------------------------------------


@pytest.mark.phoebe
async def test_phoebe_compute_job_progress_and_cancel(make_hub):
    _, client = await make_hub(phoebe=True)
    sid = await start(client)
    times = [float(t) for t in np.linspace(0, 1, 400)]
    assert (await client.send(sid, "add_dataset", kind="lc", compute_times=times)).json()["success"]
    job = await submit(client, sid, "run_compute")
    stream = await SSEStream.open(client.base_url, job["links"]["events"])
    events = await stream.events_until_end()
    await stream.close()
    fractions = [e["data"]["fraction"] for e in events if e["event"] == "progress"]
    assert len(fractions) >= 3 and fractions[-1] == 1.0 and events[-1]["event"] == "succeeded"
    fluxes = (await client.get(job["links"]["result"])).json()["result"]["model"]["lc01"]["fluxes"]
    assert len(fluxes) == 400

    long = await submit(client, sid, "run_compute", model="second")
    await wait_running(client, long["job_id"])
    await asyncio.sleep(0.5)
    cancelled = (await client.post(long["links"]["cancel"])).json()
    assert cancelled["status"] == "cancelled"
    assert (await client.send(sid, "get_value", twig="period@binary")).json() == {
        "success": True,
        "result": 1.0,
    }
    models = (await client.send(sid, "get_value", twig="fluxes@second@model")).json()
    assert models["success"] is False  # no half-added model


async def test_links_follow_the_base_url(make_hub):
    _, client = await make_hub(PhoebeSpawnerApp__base_url="/services/phoebe/")
    resp = await client.post("/services/phoebe/dash/start-session", {})
    sid = resp.json()["session_id"]
    job = (
        await client.post(f"/services/phoebe/api/v1/sessions/{sid}/jobs", {"command": "echo"})
    ).json()
    assert job["links"]["events"] == f"/services/phoebe/api/v1/jobs/{job['job_id']}/events"
    stream = await SSEStream.open(client.base_url, job["links"]["events"])
    events = await stream.events_until_end()
    await stream.close()
    assert events[-1]["data"]["result_url"] == job["links"]["result"]
    assert (await client.get(job["links"]["result"])).json()["success"] is True
    assert (await client.get("/dash/sessions")).status == 404
