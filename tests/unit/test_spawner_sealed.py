"""The sealed Spawner contract: what a backend must implement, checked when it is defined.

A backend that misses ``start``, ``stop`` or ``poll`` is refused at class definition;
``start()`` must return a :class:`WorkerEndpoint`, which the base class records and keeps
in the state; only :meth:`Spawner.local_pid` tells the hub of a local process (the Slurm
backend's worker pid is a process of its compute node, never of the hub's machine).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from phoebe_spawner.channels import WorkerEndpoint
from phoebe_spawner.spawners.base import Spawner
from phoebe_spawner.spawners.docker import DockerSpawner
from phoebe_spawner.spawners.forkserver import ForkServerSpawner
from phoebe_spawner.spawners.local import LocalProcessSpawner
from phoebe_spawner.spawners.slurm import SlurmSpawner

ENDPOINT = WorkerEndpoint("tcp://127.0.0.1:4001", "tcp://127.0.0.1:4002", "tcp://127.0.0.1:4003")


class Minimal(Spawner):
    """The smallest complete backend: returns a fixed endpoint."""

    result: Any = ENDPOINT

    async def start(self) -> WorkerEndpoint:
        return self.result  # type: ignore[no-any-return]

    async def stop(self, now: bool = False) -> None:
        return None

    async def poll(self) -> int | None:
        return 0


def test_a_backend_missing_a_method_is_refused_when_defined():
    with pytest.raises(TypeError, match=r"does not implement the Spawner contract: stop, poll"):

        class OnlyStart(Spawner):
            async def start(self) -> WorkerEndpoint:
                return ENDPOINT


def test_an_abstract_intermediate_class_is_allowed_and_its_subclasses_checked():
    class Base(Spawner, abstract=True):
        extra = 1

    with pytest.raises(TypeError, match="start, stop, poll"):

        class Incomplete(Base):
            pass

    class Complete(Base, Minimal):
        pass

    assert Complete.extra == 1


def test_every_shipped_backend_is_complete():
    for cls in (LocalProcessSpawner, ForkServerSpawner, DockerSpawner, SlurmSpawner):
        for name in ("start", "stop", "poll"):
            assert getattr(cls, name) is not getattr(Spawner, name), (cls, name)


async def test_start_is_recorded_and_kept_in_the_state():
    spawner = Minimal(session_id="s1")
    assert spawner.endpoint is None
    assert await spawner.start() == ENDPOINT
    assert spawner.endpoint == ENDPOINT
    state = orjson.loads(orjson.dumps(spawner.get_state()))
    fresh = Minimal(session_id="s1")
    fresh.load_state(state)
    assert fresh.endpoint == ENDPOINT
    fresh.clear_state()
    assert fresh.endpoint is None and fresh.get_state() == {}


async def test_start_returning_anything_else_is_refused():
    spawner = Minimal(session_id="s1")
    spawner.result = {"shell": ENDPOINT.shell, "control": ENDPOINT.control}
    with pytest.raises(TypeError, match=r"Minimal.start\(\) returned dict, not a WorkerEndpoint"):
        await spawner.start()
    assert spawner.endpoint is None


def test_state_of_earlier_versions_is_read():
    # earlier versions kept the URLs (and the port) under "endpoints" in each backend's state
    spawner = Minimal()
    spawner.load_state({"endpoints": {**ENDPOINT.to_state(), "port": "4001"}, "pid": 7})
    assert spawner.endpoint == ENDPOINT and spawner.endpoint.port == 4001


def test_curve_key_round_trips():
    encrypted = WorkerEndpoint(ENDPOINT.shell, ENDPOINT.control, ENDPOINT.iopub, "k" * 40)
    assert WorkerEndpoint.from_state(encrypted.to_state()) == encrypted
    assert "curve_server_key" not in ENDPOINT.to_state()
    assert WorkerEndpoint.from_state({"shell": "tcp://x:1"}) is None
    assert WorkerEndpoint.from_state(None) is None


def test_only_local_backends_report_a_local_pid():
    local = LocalProcessSpawner(session_id="s1")
    assert local.local_pid() is None  # not started
    local.load_state({"pid": 4242, "create_time": 1.0})
    assert local.local_pid() == 4242
    # a Slurm worker's pid is a process of its compute node: the hub must never put a
    # local process with that number into a cgroup (the latent bug of duck typing)
    slurm = SlurmSpawner(session_id="s1")
    slurm.load_state({"job_id": "12", "pid": 4242, "node": "node1"})
    assert slurm.node_pid == 4242 and slurm.local_pid() is None
    assert DockerSpawner(session_id="s1").local_pid() is None


def test_bind_gives_a_pool_worker_its_owner():
    spawner = Minimal(session_id="s1", pooled=True, session_dir="/pool/s1")
    spawner.bind({"user_id": "u1", "name": "ada"}, "/data/sessions/u1/s1")
    assert spawner.user == {"user_id": "u1", "name": "ada"}
    assert spawner.session_dir == "/data/sessions/u1/s1"
    assert spawner.pooled is False
