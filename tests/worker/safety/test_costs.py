"""Cost caps: mesh size, mesh output and array lengths (phoebe_kernel_worker.safety.costs).

``run_compute(ntriangles=200000)`` ended in ``bad_alloc`` and a mesh dataset with every
column at many times took GiBs.  Each way of asking for that must be refused before
PHOEBE allocates anything, with a message naming the limit; the session keeps working.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from phoebe_kernel_worker.commands import PhoebeSession
from phoebe_kernel_worker.errors import CommandError, UnsafeInput
from phoebe_kernel_worker.protocol import ConnectionInfo
from phoebe_kernel_worker.protocol.limits import DEFAULT_LIMITS, WorkerLimits

pytestmark = pytest.mark.phoebe

CAP = DEFAULT_LIMITS.max_ntriangles
LIMIT_MESSAGE = f"is above this service's limit of {CAP}"


def _message(session: PhoebeSession, command: str, kwargs: dict[str, Any]) -> str:
    with pytest.raises(CommandError) as info:
        session.dispatch(command, kwargs)
    return str(info.value)


def test_run_compute_refuses_too_many_triangles(phoebe_session: PhoebeSession) -> None:
    message = _message(phoebe_session, "run_compute", {"ntriangles": 200_000})
    assert message == (
        f"run_compute: ntriangles=200000 is above this service's limit of {CAP} "
        "(PHOEBE's default is 1500)"
    )
    assert phoebe_session.bundle.models == []


def test_run_solver_refuses_too_many_triangles(phoebe_session: PhoebeSession) -> None:
    message = _message(phoebe_session, "run_solver", {"solver": "dc", "ntriangles": CAP + 1})
    assert message.startswith("run_solver: ntriangles=") and LIMIT_MESSAGE in message


def test_set_value_on_compute_parameter_is_capped(phoebe_session: PhoebeSession) -> None:
    twig = "ntriangles@primary@phoebe01"
    message = _message(phoebe_session, "set_value", {"twig": twig, "value": 20_000})
    assert message.startswith("set_value: ntriangles@primary@phoebe01") and LIMIT_MESSAGE in message
    assert "must be an integer" in _message(
        phoebe_session, "set_value", {"twig": twig, "value": "20000"}
    )
    assert phoebe_session.bundle.get_value(twig) == 1500
    phoebe_session.dispatch("set_value", {"twig": twig, "value": CAP})
    assert phoebe_session.bundle.get_value(twig) == CAP
    phoebe_session.dispatch("set_value", {"twig": twig, "value": 1500})


def test_load_bundle_refuses_too_many_triangles(phoebe_session: PhoebeSession) -> None:
    params = json.loads(phoebe_session.dispatch("get_bundle")["bundle"])
    [param] = [
        p
        for p in params
        if p.get("qualifier") == "ntriangles" and p.get("component") == "secondary"
    ]
    param["value"] = 200_000
    with pytest.raises(UnsafeInput) as info:
        phoebe_session.dispatch("load_bundle", {"bundle": json.dumps(params)})
    assert "ntriangles=200000" in str(info.value) and LIMIT_MESSAGE in str(info.value)
    assert phoebe_session.bundle.get_value("ntriangles@secondary@phoebe01") == 1500


def test_mesh_output_is_capped(phoebe_session: PhoebeSession) -> None:
    """Every column at many times: refused by the run's pre-flight, whichever command
    runs the meshes; fewer times pass the same check."""
    session = phoebe_session
    times = [i / 1000 for i in range(1000)]
    session.dispatch("add_dataset", {"kind": "mesh", "dataset": "mesh_cap", "compute_times": times})
    session.bundle.set_value("columns@mesh_cap", ["*"])
    try:
        message = _message(session, "run_compute", {})
        assert message.startswith("run_compute: mesh times x columns (")
        assert f"above this service's limit of {DEFAULT_LIMITS.max_mesh_values}" in message
        message = _message(session, "run_compute", {"times": {"mesh_cap": times}})
        assert "mesh times x columns" in message
        message = _message(session, "run_solver", {"solver": "dc"})
        assert message.startswith("run_solver: mesh times x columns")
        assert session.bundle.models == []
    finally:
        session.dispatch("remove_dataset", {"dataset": "mesh_cap"})


def test_array_lengths_are_capped(tmp_path: Path) -> None:
    session = PhoebeSession(tmp_path, limits=WorkerLimits(max_array_length=100))
    message = _message(
        session, "add_dataset", {"kind": "lc", "compute_times": [0.0] * 101, "dataset": "big"}
    )
    assert message == ("add_dataset: an array of 101 elements is above this service's limit of 100")
    message = _message(session, "set_value", {"twig": "period@binary", "value": [[1.0] * 101]})
    assert "an array of 101 elements" in message
    # an array from a request's buffers counts all its elements
    times = np.frombuffer(np.zeros(101).tobytes())
    message = _message(session, "add_dataset", {"kind": "lc", "compute_times": times})
    assert message == ("add_dataset: an array of 101 elements is above this service's limit of 100")
    message = _message(
        session, "add_dataset", {"kind": "lc", "compute_times": [0.0], "fluxes": np.zeros((11, 10))}
    )
    assert "an array of 110 elements" in message
    session.dispatch("add_dataset", {"kind": "lc", "compute_times": [0.0] * 100, "dataset": "ok"})
    bundle = json.loads(session.dispatch("get_bundle")["bundle"])
    [times] = [
        p for p in bundle if p.get("qualifier") == "compute_times" and p.get("dataset") == "ok"
    ]
    times["value"] = [0.0] * 101
    with pytest.raises(UnsafeInput) as info:
        session.dispatch("load_bundle", {"bundle": json.dumps(bundle)})
    assert "an array of 101 elements is above this service's limit of 100" in str(info.value)
    times["value"] = {"nparray": "linspace", "start": 0.0, "stop": 1.0, "num": 10**6}
    with pytest.raises(UnsafeInput) as info:
        session.dispatch("load_bundle", {"bundle": json.dumps(bundle)})
    assert "array would have more than 100 elements" in str(info.value)


def test_legitimate_run_still_works(tmp_path: Path) -> None:
    """Caps configured from the connection file; a run within them computes a model."""
    info = ConnectionInfo("s", b"k", str(tmp_path), limits={"max_ntriangles": 800})
    from phoebe_kernel_worker.factories import phoebe_session

    session = phoebe_session(ConnectionInfo.from_dict(info.to_dict()))
    assert isinstance(session, PhoebeSession) and session.limits.max_ntriangles == 800
    assert "limit of 800" in _message(session, "run_compute", {"ntriangles": 801})
    session.dispatch("add_dataset", {"kind": "lc", "compute_times": [0.0, 0.25, 0.5]})
    result = session.dispatch("run_compute", {"ntriangles": 500})
    assert len(result["model"]["lc01"]["fluxes"]) == 3


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"max_triangles": 5}, "unknown worker limits ['max_triangles']"),
        ({"max_ntriangles": 0}, "max_ntriangles must be a positive integer"),
        ({"max_array_length": "10"}, "max_array_length must be a positive integer"),
        ({"max_mesh_values": True}, "max_mesh_values must be a positive integer"),
    ],
)
def test_limits_from_mapping_refuse_typos(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="worker limit") as info:
        WorkerLimits.from_mapping(data)
    assert message in str(info.value)


def test_spawner_passes_worker_limits(tmp_path: Path) -> None:
    """``Spawner.worker_limits`` (config) reaches the worker through the connection file."""
    from traitlets import TraitError

    from phoebe_spawner.spawners.local import LocalProcessSpawner

    trait = LocalProcessSpawner.class_traits()["worker_limits"]
    assert trait.metadata.get("config") is True
    for key in ("max_ntriangles", "max_mesh_values", "max_array_length"):
        assert key in trait.help
    common = {"session_id": "w1", "key": "k", "session_dir": str(tmp_path)}
    spawner = LocalProcessSpawner(**common, worker_limits={"max_ntriangles": 3000})
    info = ConnectionInfo.from_dict(spawner.connection_info().to_dict())
    assert WorkerLimits.from_mapping(info.limits).max_ntriangles == 3000
    assert LocalProcessSpawner(**common).connection_info().limits == {}
    with pytest.raises(TraitError) as error:
        LocalProcessSpawner(**common, worker_limits={"max_ntriangles": -1})
    assert "max_ntriangles must be a positive integer" in str(error.value)


def test_exposure_oversampling_is_capped(tmp_path: Path) -> None:
    """fti_oversample multiplies the times computed: capped like any times array."""
    session = PhoebeSession(tmp_path, limits=WorkerLimits(max_array_length=1000))
    session.dispatch("add_dataset", {"kind": "lc", "compute_times": [0.0, 0.1, 0.2, 0.3]})
    session.dispatch("set_value", {"twig": "exptime@lc01", "value": 60.0})
    session.dispatch("set_value", {"twig": "fti_method@lc01@phoebe01", "value": "oversample"})
    message = _message(session, "run_compute", {"fti_oversample": 251})
    assert message == (
        "run_compute: lc01 oversampled 251 times at 4 times is 1004 exposure points, "
        "above this service's limit of 1000"
    )
    session.dispatch("set_value", {"twig": "fti_oversample@lc01@phoebe01", "value": 1000})
    assert "4000 exposure points" in _message(session, "run_compute", {})
    assert "4000 exposure points" in _message(session, "run_solver", {"solver": "dc"})
    assert session.bundle.models == []
