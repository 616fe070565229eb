"""Resource limits that hold by default: memory, CPU (hung commands and jobs), disk.

Real hubs with real test workers (``phoebe_kernel_worker.testing``): ``allocate`` takes
memory, ``hang`` ignores interrupts, ``touch``/``write`` fill the session directory.
Small limits keep each test quick; the cgroup tests skip where the hub cannot create
memory cgroups (not root, no delegated subtree).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil
import pytest

from phoebe_spawner.jobs.manager import JobManager
from phoebe_spawner.sessions.limits import SessionLimits, disk_reason, measure
from phoebe_spawner.sessions.manager import SessionManager
from phoebe_spawner.spawners.local import LocalProcessSpawner

from ..conftest import Client
from ..processes import sigint_blocked
from ..waiting import async_wait_for

FORK = {"PhoebeSpawnerApp__spawner_class": "local-forkserver"}


async def start(client: Client) -> str:
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 200, resp.body
    sid: str = resp.json()["session_id"]
    return sid


async def ok(client: Client, sid: str, command: str, **kwargs: Any) -> Any:
    resp = await client.send(sid, command, **kwargs)
    assert resp.status == 200, resp.body
    assert resp.json()["success"] is True, resp.body
    return resp.json()["result"]


#: the rows of /proc/<pid>/limits for the limits these tests read
LIMIT_ROWS = {"RLIMIT_AS": "Max address space", "RLIMIT_FSIZE": "Max file size"}


def rlimit(pid: int, name: str) -> int:
    """The soft limit ``name`` (RLIMIT_AS, ...) of a live process, read from /proc (a
    walled worker runs as another uid, so prlimit on it is refused)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith(LIMIT_ROWS[name]):
            soft = line[len(LIMIT_ROWS[name]) :].split()[0]
            return psutil.RLIM_INFINITY if soft == "unlimited" else int(soft)
    raise AssertionError(f"no {name} in /proc/{pid}/limits")


# --- defaults ---------------------------------------------------------------------------


def test_limits_are_on_by_default():
    assert LocalProcessSpawner().mem_limit == 4 * 1024**3
    assert LocalProcessSpawner().max_file_size == 1024**3
    assert SessionManager.command_timeout.default_value == 600
    assert JobManager.job_timeout.default_value == 3600
    assert SessionLimits.memory_cgroup.default_value is True
    assert SessionLimits.remove_session_dirs.default_value is True
    assert SessionLimits.session_disk_quota.default_value == 1024**3
    assert SessionLimits.session_max_files.default_value == 10000


@pytest.mark.parametrize("backend", ["local", "local-forkserver"])
async def test_workers_get_rlimits_by_default(make_hub, backend):
    _, client = await make_hub(
        PhoebeSpawnerApp__spawner_class=backend, SessionLimits__memory_cgroup=False
    )
    sid = await start(client)
    pid = (await ok(client, sid, "whereami"))["pid"]
    assert rlimit(pid, "RLIMIT_AS") == 4 * 1024**3
    assert rlimit(pid, "RLIMIT_FSIZE") == 1024**3


# --- memory ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["local", "local-forkserver"])
async def test_memory_cgroup_kills_only_that_worker(make_hub, backend):
    app, client = await make_hub(
        PhoebeSpawnerApp__spawner_class=backend, LocalProcessSpawner__mem_limit="128M"
    )
    groups = app.manager.limits.memory
    if groups is None:
        pytest.skip("this hub cannot create memory cgroups (needs root or a delegated tree)")
    victim, other = await start(client), await start(client)
    pid = (await ok(client, victim, "whereami"))["pid"]
    assert rlimit(pid, "RLIMIT_AS") == psutil.RLIM_INFINITY  # the cgroup holds the limit
    group = groups.root / f"s-{victim}"
    await async_wait_for(
        lambda: str(pid) in _procs(group), "the worker in its memory group", timeout=10
    )
    assert int((group / groups.limit_file).read_text()) == 128 * 1024**2

    resp = await client.send(victim, "allocate", mib=512)
    assert resp.status == 503 and "out of memory (limit 128 MiB)" in resp.detail
    s = app.manager.sessions[victim]
    assert s.status == "failed" and s.reason == "out of memory (limit 128 MiB)"
    resp = await client.send(victim, "ping")
    assert resp.status == 410 and "out of memory (limit 128 MiB)" in resp.detail
    assert await ok(client, other, "ping") == {"status": "ready"}
    await async_wait_for(lambda: not group.exists(), "the memory group to be removed", timeout=10)


def _procs(group: Path) -> list[str]:
    try:
        return (group / "cgroup.procs").read_text().split()
    except OSError:
        return []


async def test_memory_error_under_rlimit_is_a_clear_failure(make_hub):
    _, client = await make_hub(
        LocalProcessSpawner__mem_limit="1G", SessionLimits__memory_cgroup=False
    )
    sid = await start(client)
    resp = await client.send(sid, "allocate", mib=2048)
    assert resp.status == 200
    body = resp.json()
    assert body["success"] is False and body["error"].startswith("out of memory (limit 1 GiB)")
    assert await ok(client, sid, "ping") == {"status": "ready"}  # the worker lives on


async def test_sampled_memory_over_the_limit_fails_the_session(make_hub):
    # the hub's own sampling holds mem_limit on every backend, whatever the OS enforces
    app, client = await make_hub(
        SessionLimits__memory_cgroup=False, SessionManager__memory_interval=0.2
    )
    sid = await start(client)
    app.manager.sessions[sid].spawner.mem_limit = 100 * 1024**2  # below what it will use
    resp = await client.send(sid, "allocate", mib=150)
    assert resp.status in (200, 503)  # 503: the sampler failed it while it allocated
    await async_wait_for(
        lambda: app.manager.sessions[sid].status == "failed", "the session to fail", timeout=10
    )
    assert app.manager.sessions[sid].reason.startswith("out of memory (limit 100 MiB): ")


# --- CPU: hung commands and jobs -----------------------------------------------------------


async def job_done(client: Client, job_id: str) -> dict[str, Any]:
    """The job once it has ended (polled over HTTP)."""

    async def ended() -> dict[str, Any] | None:
        job: dict[str, Any] = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return await async_wait_for(ended, f"job {job_id} to end", timeout=30, interval=0.05)


@pytest.mark.parametrize("backend", ["local", "local-forkserver"])
async def test_hung_job_fails_its_session_within_the_grace(make_hub, backend):
    app, client = await make_hub(
        PhoebeSpawnerApp__spawner_class=backend,
        # long enough that the worker is inside 'hang' (SIGINT blocked) when the
        # interrupt comes, even on a loaded machine
        JobManager__job_timeout=2.0,
        SessionManager__interrupt_grace=0.5,
    )
    hung, other = await start(client), await start(client)
    resp = await client.post(f"/api/v1/sessions/{hung}/jobs", {"command": "hang"})
    assert resp.status == 202
    job = await job_done(client, resp.json()["job_id"])
    reason = "worker hung: 'hang' ignored an interrupt for 0.5 s"
    assert job["status"] == "failed"
    stopped = f"the job exceeded job_timeout (2 s); the session was stopped: {reason}"
    assert job["error"] == stopped
    s = app.manager.sessions[hung]
    assert s.status == "failed" and s.reason == reason
    resp = await client.send(hung, "ping")
    assert resp.status == 410 and reason in resp.detail
    assert await ok(client, other, "ping") == {"status": "ready"}


async def test_cancelling_a_job_of_a_hung_worker_fails_its_session_within_the_grace(make_hub):
    app, client = await make_hub(SessionManager__interrupt_grace=0.5)
    hung = await start(client)
    pid = app.manager.sessions[hung].spawner.pid
    resp = await client.post(f"/api/v1/sessions/{hung}/jobs", {"command": "hang"})
    assert resp.status == 202
    job_id = resp.json()["job_id"]
    await async_wait_for(
        lambda: sigint_blocked(pid), "the worker to block SIGINT in hang", timeout=10
    )
    resp = await client.post(f"/api/v1/jobs/{job_id}/cancel", {})
    assert resp.status == 200, resp.body
    reason = "worker hung: 'hang' ignored a cancel for 0.5 s"
    job = await job_done(client, job_id)
    assert (job["status"], job["error"]) == ("cancelled", reason)
    s = app.manager.sessions[hung]
    assert (s.status, s.reason) == ("failed", reason)
    await async_wait_for(lambda: not psutil.pid_exists(pid), "the hung worker to exit", timeout=10)


async def test_job_timeout_counts_from_the_job_start(make_hub):
    _, client = await make_hub(JobManager__job_timeout=1.5)
    sid = await start(client)
    ids = []
    for _ in range(2):  # the second waits ~1 s in the queue: only its run counts
        resp = await client.post(f"/api/v1/sessions/{sid}/jobs", {"command": "sleep", "seconds": 1})
        ids.append(resp.json()["job_id"])
    for job_id in ids:
        assert (await job_done(client, job_id))["status"] == "succeeded"


async def test_interruptible_job_past_its_timeout_leaves_the_session_usable(make_hub):
    app, client = await make_hub(JobManager__job_timeout=0.3)
    sid = await start(client)
    resp = await client.post(f"/api/v1/sessions/{sid}/jobs", {"command": "sleep", "seconds": 30})
    job = await job_done(client, resp.json()["job_id"])
    assert job["status"] == "failed"
    assert job["error"] == "the job exceeded job_timeout (0.3 s) and was interrupted"
    assert app.manager.sessions[sid].status == "running"
    assert await ok(client, sid, "echo", after="timeout") == {"after": "timeout"}


# --- disk -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["local", "local-forkserver"])
async def test_session_dir_is_removed_when_the_session_ends(make_hub, backend):
    app, client = await make_hub(PhoebeSpawnerApp__spawner_class=backend)
    ended, crashed = await start(client), await start(client)
    dirs = {sid: Path((await ok(client, sid, "whereami"))["cwd"]) for sid in (ended, crashed)}
    for sid in dirs:
        await ok(client, sid, "touch", name="model.json")
        assert (dirs[sid] / "model.json").exists()
    cp = await client.post(f"/api/v1/sessions/{ended}/checkpoints", {})
    assert cp.status in (200, 201), cp.body
    assert (await client.post(f"/dash/end-session/{ended}")).status == 200
    assert (await client.send(crashed, "crash", status=3)).status == 503
    await async_wait_for(
        lambda: not any(d.exists() for d in dirs.values()),
        "the session directories to be removed",
        timeout=10,
    )
    assert list(Path(app.data_dir, "checkpoints").rglob("*.json"))  # checkpoints stay


async def test_session_dir_is_kept_for_readoption(make_hub, tmp_path):
    data = tmp_path / "shared"
    app1, client1 = await make_hub(data_dir=data, SessionManager__stop_workers_on_shutdown=False)
    sid = await start(client1)
    cwd = Path((await ok(client1, sid, "whereami"))["cwd"])
    await ok(client1, sid, "touch", name="kept.txt")
    await app1.cleanup()
    assert (cwd / "kept.txt").exists()
    _, client2 = await make_hub(data_dir=data)
    assert "kept.txt" in (await ok(client2, sid, "whereami"))["files"]
    await client2.post(f"/dash/end-session/{sid}")
    await async_wait_for(
        lambda: not cwd.exists(), "the session directory to be removed", timeout=10
    )


async def test_file_count_quota_stops_the_session(make_hub):
    app, client = await make_hub(
        SessionLimits__session_max_files=5, SessionLimits__disk_interval=0.2
    )
    full, other = await start(client), await start(client)
    for i in range(8):
        await ok(client, full, "touch", name=f"f{i}")
    await ok(client, other, "touch", name="one")
    await async_wait_for(
        lambda: app.manager.sessions[full].status == "failed", "the session to fail", timeout=10
    )
    reason = "disk quota exceeded (limit 5 files in the session directory)"
    assert app.manager.sessions[full].reason == reason
    resp = await client.send(full, "ping")
    assert resp.status == 410 and reason in resp.detail
    assert app.manager.sessions[other].status == "running"
    assert await ok(client, other, "ping") == {"status": "ready"}


async def test_size_quota_and_file_size_limit(make_hub):
    app, client = await make_hub(
        SessionLimits__session_disk_quota="256K",
        SessionLimits__disk_interval=0.2,
        LocalProcessSpawner__max_file_size="200K",
    )
    sid = await start(client)
    resp = await client.send(sid, "write", name="big", kib=300)  # RLIMIT_FSIZE: EFBIG
    assert resp.status == 200 and resp.json()["success"] is False
    assert "File too large" in resp.json()["error"]
    assert app.manager.sessions[sid].status == "running"
    await ok(client, sid, "write", name="a", kib=150)
    await ok(client, sid, "write", name="b", kib=150)
    await async_wait_for(
        lambda: app.manager.sessions[sid].status == "failed", "the session to fail", timeout=10
    )
    reason = "disk quota exceeded (limit 256 KiB in the session directory)"
    assert app.manager.sessions[sid].reason == reason


def test_measure_stops_early_and_ignores_links(tmp_path):
    for i in range(50):
        (tmp_path / f"f{i}").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to("/")  # never followed
    size, files = measure(str(tmp_path), 0, 10)
    assert files == 11
    size, files = measure(str(tmp_path), 0, 0)
    assert files == 52 and size > 0
    assert disk_reason(size, files, 0, 52) is None
    assert disk_reason(2048, 1, 1024, 0) == (
        "disk quota exceeded (limit 1 KiB in the session directory)"
    )
