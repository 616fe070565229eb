"""The Spawner contract, checked for every backend (``BACKENDS``; docker and slurm add theirs).

See ``phoebe_spawner.spawners.base`` for the contract itself.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import zmq.asyncio
from traitlets.config import Config, Configurable

from phoebe_kernel_worker import protocol
from phoebe_spawner.channels import WorkerChannel, WorkerEndpoint
from phoebe_spawner.spawners.base import Spawner, SpawnError
from phoebe_spawner.spawners.docker import DockerSpawner
from phoebe_spawner.spawners.forkserver import ForkServerSpawner
from phoebe_spawner.spawners.local import LocalProcessSpawner
from phoebe_spawner.spawners.slurm import SlurmSpawner

from ..conftest import TEST_FACTORY
from ..docker_engine import kill_container
from ..processes import gone
from ..waiting import async_wait_for, wait_for

SpawnerFactory = Callable[..., Spawner]


def local_factory(tmp_path: Any) -> SpawnerFactory:
    def make(session_id: str = "c1", **kw: Any) -> Spawner:
        kw.setdefault("worker_args", TEST_FACTORY)
        return LocalProcessSpawner(
            session_id=session_id,
            key=protocol.derive_session_key(b"contract-secret", session_id).decode(),
            session_dir=str(tmp_path / "sessions" / session_id),
            runtime_dir=str(tmp_path / "runtime" / session_id),
            **kw,
        )

    return make


class ForkServerFactory:
    """Fork-server spawners sharing one fork server, started on first use (``aclose`` stops it)."""

    def __init__(self, tmp_path: Any) -> None:
        self.tmp_path = tmp_path
        self.server: Any = None

    def __call__(self, session_id: str = "c1", **kw: Any) -> Spawner:
        kw.setdefault("worker_args", TEST_FACTORY)
        return ForkServerSpawner(
            session_id=session_id,
            key=protocol.derive_session_key(b"contract-secret", session_id).decode(),
            session_dir=str(self.tmp_path / "sessions" / session_id),
            runtime_dir=str(self.tmp_path / "runtime" / session_id),
            backend=self.server,
            **kw,
        )

    async def start(self) -> None:
        config = Config()
        config.LocalProcessSpawner.worker_args = TEST_FACTORY
        parent = Configurable(config=config)
        self.server = await ForkServerSpawner.start_backend(parent, str(self.tmp_path / "rt"))

    async def aclose(self) -> None:
        await ForkServerSpawner.stop_backend(self.server)


class DockerFactory:
    """Docker spawners sharing one engine connection (``start``/``aclose``, as a hub does)."""

    fixtures = ("docker_engine",)

    def __init__(self, tmp_path: Any, docker_engine: Any) -> None:
        self.tmp_path = tmp_path
        self.docker_engine = docker_engine
        self.connection: Any = None

    def __call__(self, session_id: str = "c1", **kw: Any) -> Spawner:
        kw.setdefault("worker_args", TEST_FACTORY)
        return DockerSpawner(
            session_id=session_id,
            user={"name": "contract", "user_id": "contract"},
            key=protocol.derive_session_key(b"contract-secret", session_id).decode(),
            session_dir=str(self.tmp_path / "sessions" / session_id),
            runtime_dir=str(self.tmp_path / "runtime" / session_id),
            backend=self.connection,
            **{**self.docker_engine.traits(), **kw},
        )

    async def start(self) -> None:
        config = Config()
        config.DockerSpawner.docker_host = self.docker_engine.url
        parent = Configurable(config=config)
        self.connection = await DockerSpawner.start_backend(parent, str(self.tmp_path / "rt"))

    async def aclose(self) -> None:
        await DockerSpawner.stop_backend(self.connection)


def slurm_factory(tmp_path: Any, slurm_cluster: Any) -> SpawnerFactory:
    """Workers as jobs of the private test cluster (tests/slurm_cluster.py)."""

    def make(session_id: str = "c1", **kw: Any) -> Spawner:
        kw.setdefault("worker_args", TEST_FACTORY)
        kw.setdefault("mem_limit", "1G")  # the private node has 4 GiB
        return SlurmSpawner(
            session_id=session_id,
            key=protocol.derive_session_key(b"contract-secret", session_id).decode(),
            session_dir=str(tmp_path / "sessions" / session_id),
            runtime_dir=str(tmp_path / "runtime" / session_id),
            slurm_conf=str(slurm_cluster.conf),
            registration_ip=slurm_cluster.hub_ip,
            job_poll_interval=0.2,
            state_cache_seconds=0.2,
            exit_grace=0.5,  # stop() here comes without a shutdown request first
            **kw,
        )

    return make


slurm_factory.fixtures = ("slurm_cluster",)  # type: ignore[attr-defined]

BACKENDS: dict[str, Any] = {
    "local": local_factory,
    "local-forkserver": ForkServerFactory,
    "docker": DockerFactory,
    "slurm": slurm_factory,
}
#: backends are marked, so their tier can be selected (-m docker) and skips say why
MARKS = {"docker": [pytest.mark.docker], "slurm": [pytest.mark.slurm]}


@pytest.fixture(params=[pytest.param(name, marks=MARKS.get(name, [])) for name in sorted(BACKENDS)])
async def make_spawner(request, tmp_path) -> Any:
    """One backend's spawner factory; a backend names the fixtures it needs in ``fixtures``,
    and one with a hub-wide resource (the fork server) has ``start``/``aclose``."""
    factory = BACKENDS[request.param]
    needs = {name: request.getfixturevalue(name) for name in getattr(factory, "fixtures", ())}
    make = factory(tmp_path, **needs)
    if hasattr(make, "start"):
        await make.start()
    yield make
    if hasattr(make, "aclose"):
        await make.aclose()


async def status_of(spawner: Spawner, endpoint: WorkerEndpoint) -> dict[str, Any]:
    ctx = zmq.asyncio.Context()
    channel = WorkerChannel(ctx, spawner.session_id, spawner.key.encode(), endpoint)
    channel.connect()
    try:
        return await channel.control(protocol.STATUS_REQUEST, timeout=10)
    finally:
        await channel.close()
        ctx.destroy(linger=0)


async def poll_until_exited(spawner: Spawner, timeout: float = 5) -> int:
    """The worker's exit status, once ``poll()`` reports one."""

    async def exited() -> bool:
        return await spawner.poll() is not None

    await async_wait_for(exited, "poll() to report the exit", timeout=timeout)
    status = await spawner.poll()
    assert isinstance(status, int), status
    return status


async def test_start_poll_stop(make_spawner):
    spawner = make_spawner()
    assert await spawner.poll() == 0  # before start
    endpoint = await spawner.start()
    assert isinstance(endpoint, WorkerEndpoint) and spawner.endpoint == endpoint
    assert await spawner.poll() is None
    status = await status_of(spawner, endpoint)
    assert status["state"] == "idle"
    await spawner.stop()
    code = await spawner.poll()
    assert isinstance(code, int)
    await spawner.stop()  # twice is fine
    assert isinstance(await spawner.poll(), int)
    spawner.clear_state()
    assert await spawner.poll() == 0


async def test_stop_now(make_spawner):
    spawner = make_spawner()
    await spawner.start()
    await spawner.stop(now=True)
    assert isinstance(await spawner.poll(), int)
    spawner.clear_state()


async def test_state_round_trips_and_readopts(make_spawner):
    spawner = make_spawner()
    endpoint = await spawner.start()
    state = orjson.loads(orjson.dumps(spawner.get_state()))  # JSON-able
    adopted = make_spawner()
    adopted.load_state(state)
    assert adopted.endpoint == endpoint  # the base class keeps the endpoint in the state
    assert await adopted.poll() is None
    assert (await status_of(adopted, adopted.endpoint))["state"] == "idle"
    await adopted.stop()
    assert isinstance(await adopted.poll(), int)
    # the original instance learns of the exit when its child is reaped, a moment later
    await poll_until_exited(spawner)
    adopted.clear_state()
    spawner.clear_state()


async def test_failed_start_raises_and_leaves_nothing(make_spawner):
    spawner = make_spawner(worker_extra={"fail_start": "broken on purpose"})
    with pytest.raises(SpawnError, match="broken on purpose"):
        await spawner.start()
    assert isinstance(await spawner.poll(), int)
    await spawner.stop()
    spawner.clear_state()


async def test_start_timeout(make_spawner):
    spawner = make_spawner(worker_extra={"start_delay": 30}, start_timeout=0.5)
    with pytest.raises(SpawnError, match=r"within 0\.5 s"):
        await spawner.start()
    assert isinstance(await spawner.poll(), int)
    spawner.clear_state()


async def test_progress_replays_to_ready(make_spawner):
    spawner = make_spawner()
    task = asyncio.ensure_future(spawner.start())
    events = [e async for e in spawner.progress()]
    await task
    assert events[-1]["progress"] == 100 and all("message" in e for e in events)
    assert [e async for e in spawner.progress()] == events  # a late reader sees them all
    await spawner.stop()
    spawner.clear_state()


async def test_a_died_worker_reports_its_status(make_spawner):
    spawner = make_spawner()
    await spawner.start()
    if isinstance(spawner, LocalProcessSpawner):
        pid = spawner.local_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    elif isinstance(spawner, SlurmSpawner):
        # the Slurm test node shares this machine's pid namespace (only its network
        # differs), so its worker can be killed from here; the hub never assumes that
        assert spawner.local_pid() is None and spawner.node_pid is not None
        os.kill(spawner.node_pid, signal.SIGKILL)
    elif isinstance(spawner, DockerSpawner):
        await kill_container(spawner, "SIGKILL")
    assert await poll_until_exited(spawner, timeout=10) == -signal.SIGKILL
    await spawner.stop()
    spawner.clear_state()


# --- local backend specifics -----------------------------------------------------------------


async def test_local_reused_pid_is_not_our_worker(tmp_path):
    make = local_factory(tmp_path)
    spawner = make()
    await spawner.start()
    state = spawner.get_state()
    impostor = make()
    impostor.load_state({**state, "create_time": state["create_time"] - 1000})
    assert await impostor.poll() == 1  # same pid, different process start time
    await impostor.stop()  # must not signal the real worker
    assert await spawner.poll() is None
    await spawner.stop()
    spawner.clear_state()


async def test_local_stop_kills_the_whole_group(tmp_path):
    spawner = local_factory(tmp_path)(
        cmd=[
            "/bin/sh",
            "-c",
            'sleep 300 & exec "$0" "$@"',
            os.sys.executable,
            "-m",
            "phoebe_kernel_worker",
        ]
    )
    await spawner.start()
    import psutil

    children = psutil.Process(spawner.pid).children(recursive=True)
    group = [p for p in psutil.process_iter() if _pgid(p.pid) == spawner.pid]
    assert len(group) >= 2, (children, group)
    await spawner.stop()

    wait_for(lambda: all(gone(p) for p in group), "the process group to exit", timeout=5)
    spawner.clear_state()


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


async def test_local_memory_limit(tmp_path):
    spawner = local_factory(tmp_path)(mem_limit="1G")
    endpoint = await spawner.start()
    ctx = zmq.asyncio.Context()
    channel = WorkerChannel(ctx, spawner.session_id, spawner.key.encode(), endpoint)
    channel.connect()
    reply = await channel.execute(orjson.dumps({"command": "allocate", "mib": 2048}), timeout=30)
    assert reply.json()["success"] is False and reply.json()["error"].startswith(
        "out of memory (limit 1 GiB)"
    )
    ok = await channel.execute(b'{"command": "ping"}', timeout=5)
    assert ok.json()["success"] is True
    await channel.close()
    ctx.destroy(linger=0)
    await spawner.stop()
    spawner.clear_state()
