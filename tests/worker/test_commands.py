"""The worker's commands against real PHOEBE, with the old phoebe-server's argument forms."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest

from phoebe_kernel_worker import commands
from phoebe_kernel_worker.commands import (
    CommandError,
    PhoebeSession,
    list_passbands,
)
from phoebe_kernel_worker.protocol import COMMANDS
from phoebe_kernel_worker.serialize import dumps

pytestmark = pytest.mark.phoebe

EXPECTED_COMMANDS = {
    "ping",
    "set_morphology",
    "change_morphology",
    "new_bundle",
    "get_parameter",
    "get_value",
    "set_value",
    "add_dataset",
    "remove_dataset",
    "run_compute",
    "run_solver",
    "get_bundle",
    "save_bundle",
    "load_bundle",
    "get_datasets",
    "get_uniqueid",
    "update_uniqueid",
    "is_parameter_constrained",
    "attach_parameters",
}
TIMES = [i / 10 for i in range(11)]


@pytest.fixture
def session(phoebe_session: PhoebeSession) -> Iterator[PhoebeSession]:
    """The module's session, reset to the default detached bundle after each test."""
    yield phoebe_session
    phoebe_session.dispatch("new_bundle", {})


def wire(result: Any) -> Any:
    """What the client receives for ``result``."""
    return orjson.loads(dumps({"success": True, "result": result}))["result"]


def test_command_table() -> None:
    """The protocol's command names (what the hub counts) are the worker's table."""
    assert EXPECTED_COMMANDS == COMMANDS
    assert set(commands._HANDLERS) == COMMANDS


def test_ping_and_unknown_commands(session: PhoebeSession) -> None:
    assert session.dispatch("ping", {}) == {"status": "ready"}
    assert session.dispatch("ping", None) == {"status": "ready"}
    for name in ["nope", "__init__", "dispatch", "bundle", "_run_atomically", "_resolve", 3]:
        with pytest.raises(CommandError, match="unknown command"):
            session.dispatch(name, {})  # type: ignore[arg-type]


def test_bad_argument_shapes_are_command_errors(session: PhoebeSession) -> None:
    with pytest.raises(CommandError):
        session.dispatch("ping", {"extra": 1})
    with pytest.raises(CommandError):
        session.dispatch("set_value", {"twig": "period@binary"})  # no value
    with pytest.raises(CommandError):
        session.dispatch("get_value", [("twig", "x")])  # type: ignore[arg-type]


def test_set_and_get_values(session: PhoebeSession) -> None:
    assert session.dispatch("set_value", {"twig": "period@binary", "value": 1.5}) == {}
    assert session.dispatch("get_value", {"twig": "period@binary"}) == 1.5
    session.dispatch("set_value", {"twig": "period@binary", "value": 36.0, "unit": "h"})
    assert session.dispatch("get_value", {"twig": "period@binary"}) == pytest.approx(1.5)
    assert session.dispatch("get_value", {"twig": "period@binary", "unit": "h"}) == pytest.approx(
        36.0
    )
    mass = session.dispatch("get_value", {"twig": "mass@primary"})
    assert isinstance(mass, float)
    assert mass > 0
    assert session.dispatch("get_value", {"qualifier": "teff", "component": "primary"}) == 6000.0


def test_get_parameter(session: PhoebeSession) -> None:
    result = session.dispatch("get_parameter", {"twig": "period@binary"})
    assert result["Class"] == "FloatParameter"
    assert result["qualifier"] == "period"
    assert result["component"] == "binary"
    on_wire = wire(result)
    assert on_wire["value"] == 1.0
    assert on_wire["default_unit"] == "d"
    constraint = session.dispatch("get_parameter", {"twig": "sma@binary", "context": "constraint"})
    assert constraint["Class"] == "ConstraintParameter"
    assert "{mass@secondary" in constraint["value"]


def test_constrained_after_flips(session: PhoebeSession) -> None:
    assert session.dispatch("is_parameter_constrained", {"twig": "mass@primary"}) is False
    assert session.dispatch("is_parameter_constrained", {"twig": "q@binary"}) is True
    assert session.dispatch("is_parameter_constrained", {"twig": "sma@binary"}) is True
    uid = session.dispatch("get_uniqueid", {"twig": "q@binary@component"})
    assert session.dispatch("is_parameter_constrained", {"uniqueid": uid}) is True
    hierarchy = session.dispatch("is_parameter_constrained", {"twig": "hierarchy@system"})
    assert hierarchy is False


def test_uniqueids(session: PhoebeSession) -> None:
    uid = session.dispatch("get_uniqueid", {"twig": "period@binary"})
    assert isinstance(uid, str)
    assert len(uid) > 10
    assert session.dispatch("get_uniqueid", {"twig": "no_such_thing"}) is None
    assert session.dispatch("update_uniqueid", {"twig": "period@binary"}) == uid
    spec = {"ptype": "float", "qualifier": "zoom", "value": 2.0}
    session.dispatch("attach_parameters", {"parameters": [spec]})
    new = session.dispatch("update_uniqueid", {"twig": "zoom@ui", "uniqueid": "client-id_1"})
    assert new == "client-id_1"
    assert session.dispatch("get_uniqueid", {"twig": "zoom@ui"}) == "client-id_1"
    assert session.dispatch("get_value", {"uniqueid": "client-id_1"}) == 2.0


def test_lc_compute(session: PhoebeSession) -> None:
    session.dispatch("add_dataset", {"kind": "lc", "compute_times": TIMES, "overwrite": True})
    assert session.dispatch("get_datasets", {}) == {"datasets": {"lc01": {"kind": "lc"}}}
    result = wire(session.dispatch("run_compute", {}))
    lc = result["model"]["lc01"]
    assert lc["times"] == TIMES
    assert len(lc["phases"]) == 11
    assert len(lc["fluxes"]) == 11
    assert all(isinstance(f, float) and np.isfinite(f) and f > 0 for f in lc["fluxes"])
    assert min(lc["fluxes"]) < max(lc["fluxes"])  # eclipses


def test_rv_and_several_models(session: PhoebeSession) -> None:
    session.dispatch("add_dataset", {"kind": "rv", "compute_times": [0.0, 0.25, 0.75]})
    first = session.dispatch("run_compute", {})["model"]["rv01"]
    assert len(first["rvs_primary"]) == 3
    assert len(first["rvs_secondary"]) == 3
    assert first["rvs_primary"][1] < 0 < first["rvs_secondary"][1]  # q = 1: mirror images
    assert first["rvs_primary"][1] == pytest.approx(-first["rvs_secondary"][1], rel=1e-2)
    session.dispatch("set_value", {"twig": "vgamma@system", "value": 50.0})
    second = session.dispatch("run_compute", {"model": "shifted"})["model"]["rv01"]
    assert sorted(session.bundle.models) == ["latest", "shifted"]
    shift = np.asarray(second["rvs_primary"]) - np.asarray(first["rvs_primary"])
    assert shift == pytest.approx([50.0] * 3, abs=1e-6)
    again = session.dispatch("run_compute", {})["model"]["rv01"]  # overwrites 'latest'
    assert np.asarray(again["rvs_primary"]) == pytest.approx(np.asarray(second["rvs_primary"]))
    assert sorted(session.bundle.models) == ["latest", "shifted"]


def test_dc_solver_and_compute_from_solution(session: PhoebeSession) -> None:
    d = session.dispatch
    d("add_dataset", {"kind": "lc", "compute_times": TIMES, "dataset": "lc01"})
    fluxes = np.asarray(d("run_compute", {})["model"]["lc01"]["fluxes"])
    d("set_value", {"twig": "times@lc01", "context": "dataset", "value": TIMES})
    d("set_value", {"twig": "fluxes@lc01", "context": "dataset", "value": list(fluxes * 1.01)})
    d("set_value", {"twig": "sigmas@lc01", "context": "dataset", "value": list(fluxes * 0.01)})
    d("set_value", {"twig": "fit_parameters@dc", "value": ["teff@primary"]})
    result = wire(d("run_solver", {"solver": "dc"}))
    solution = result["solution"]
    assert solution["fit_parameters"] == ["teff@primary@star@component"]
    assert solution["initial_values"] == [6000.0]
    assert len(solution["fitted_values"]) == 1
    assert solution["fitted_values"][0] != 6000.0
    assert session.bundle.solutions == ["latest"]
    model = d("run_compute", {"solution": "latest", "model": "fitted"})["model"]["lc01"]
    assert np.shape(model["fluxes"]) == (11,)  # first sample of the solution's model


def test_bundle_round_trip(session: PhoebeSession) -> None:
    session.dispatch("set_value", {"twig": "period@binary", "value": 3.25})
    session.dispatch("add_dataset", {"kind": "lc", "compute_times": TIMES, "dataset": "obs"})
    saved = session.dispatch("save_bundle", {})
    text = session.dispatch("get_bundle", {})["bundle"]
    assert isinstance(text, str)
    assert json.loads(saved["bundle"])[0].keys() == json.loads(text)[0].keys()
    session.dispatch("set_value", {"twig": "period@binary", "value": 7.0})
    session.dispatch("remove_dataset", {"dataset": "obs"})
    assert session.dispatch("load_bundle", {"bundle": text}) == {}
    assert session.dispatch("get_value", {"twig": "period@binary"}) == 3.25
    assert session.dispatch("get_datasets", {}) == {"datasets": {"obs": {"kind": "lc"}}}
    assert session.dispatch("is_parameter_constrained", {"twig": "q@binary"}) is True


def test_attach_and_remove_ui_parameters(session: PhoebeSession) -> None:
    session.dispatch("add_dataset", {"kind": "lc", "compute_times": TIMES, "dataset": "lc01"})
    specs = [
        {
            "ptype": "choice",
            "qualifier": "plot_kind",
            "value": "fluxes",
            "choices": ["fluxes", "magnitudes"],
            "description": "what the plot shows",
            "dataset": "lc01",
        },
        {"ptype": "bool", "qualifier": "visible", "value": True, "dataset": "lc01"},
        {"ptype": "int", "qualifier": "points", "value": 3, "limits": [0, None]},
        {"ptype": "float", "qualifier": "offset", "value": 0.5, "default_unit": "d"},
        {"ptype": "string", "qualifier": "label", "value": "Bob's light curve"},
    ]
    result = session.dispatch("attach_parameters", {"parameters": specs})
    assert len(result["unique_ids"]) == 5
    assert len(set(result["unique_ids"])) == 5
    assert session.dispatch("get_value", {"twig": "plot_kind@ui"}) == "fluxes"
    session.dispatch("set_value", {"twig": "plot_kind@ui", "value": "magnitudes"})
    assert session.dispatch("get_value", {"twig": "plot_kind@lc01@ui"}) == "magnitudes"
    with pytest.raises(ValueError, match="must be one of"):
        session.dispatch("set_value", {"twig": "plot_kind@ui", "value": "nope"})
    assert session.dispatch("get_value", {"twig": "offset@ui", "unit": "h"}) == 12.0
    assert session.dispatch("get_value", {"twig": "label@ui"}) == "Bob's light curve"
    with pytest.raises(CommandError, match="already exists"):
        session.dispatch("attach_parameters", {"parameters": [specs[1]]})

    assert session.dispatch("remove_dataset", {"dataset": "lc01"}) == {}
    remaining = session.bundle.filter(context="ui", check_visible=False).qualifiers
    assert sorted(remaining) == ["label", "offset", "points"]
    assert session.bundle.datasets == []


def test_morphologies(session: PhoebeSession) -> None:
    assert session.dispatch("set_morphology", {"morphology": "semi-detached"}) == {}
    requiv = session.bundle.get_parameter(
        qualifier="requiv", component="secondary", context="constraint"
    )
    assert requiv.constraint_func == "semidetached"
    assert session.dispatch("change_morphology", {"morphology": "contact"}) == {}
    assert session.bundle.hierarchy.get_envelopes() == ["contact_envelope"]
    assert session.dispatch("is_parameter_constrained", {"twig": "q@binary"}) is True
    assert session.bundle.solvers == ["dc"]
    with pytest.raises(ValueError, match="Unknown morphology: triple"):
        session.dispatch("set_morphology", {"morphology": "triple"})
    assert session.dispatch("new_bundle", {}) == {}
    assert session.bundle.hierarchy.get_envelopes() == []


def test_list_passbands() -> None:
    result = list_passbands()
    assert "Johnson:V" in result["passbands"]
    assert result["passbands"] == sorted(result["passbands"])
    assert "V" in result["grouped"]["Johnson"]


def _interrupt_after_model_attached(
    session: PhoebeSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = session.bundle._attach_params

    def attach_then_interrupt(params: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(params, *args, **kwargs)
        if kwargs.get("context") in ("model", "solution"):
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(session.bundle, "_attach_params", attach_then_interrupt)


def test_interrupted_run_compute_leaves_no_model(
    session: PhoebeSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    import phoebe

    session.dispatch("add_dataset", {"kind": "lc", "compute_times": TIMES, "dataset": "lc01"})
    session.dispatch("run_compute", {"model": "kept"})
    checks_before = phoebe.conf.interactive_checks
    _interrupt_after_model_attached(session, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        session.dispatch("run_compute", {"model": "partial"})
    monkeypatch.undo()
    assert session.bundle.models == ["kept"]
    assert not len(session.bundle.filter(model="partial", check_visible=False))
    assert phoebe.conf.interactive_constraints is True  # PHOEBE had switched it off
    assert phoebe.conf.interactive_checks is checks_before
    result = session.dispatch("run_compute", {})
    assert len(result["model"]["lc01"]["fluxes"]) == 11
    assert sorted(session.bundle.models) == ["kept", "latest"]


def test_interrupted_run_solver_leaves_no_solution(
    session: PhoebeSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = session.dispatch
    d("add_dataset", {"kind": "lc", "compute_times": TIMES, "dataset": "lc01"})
    fluxes = np.asarray(d("run_compute", {})["model"]["lc01"]["fluxes"])
    d("set_value", {"twig": "times@lc01", "context": "dataset", "value": TIMES})
    d("set_value", {"twig": "fluxes@lc01", "context": "dataset", "value": list(fluxes)})
    d("set_value", {"twig": "sigmas@lc01", "context": "dataset", "value": list(fluxes * 0.01)})
    d("set_value", {"twig": "fit_parameters@dc", "value": ["incl@binary"]})
    _interrupt_after_model_attached(session, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        d("run_solver", {"solver": "dc", "solution": "partial"})
    monkeypatch.undo()
    assert session.bundle.solutions == []
    assert d("get_value", {"twig": "incl@binary"}) == 90.0
    assert d("ping", {}) == {"status": "ready"}


def test_sigint_during_run_compute(session: PhoebeSession) -> None:
    """A real SIGINT (how the main loop interrupts) in the middle of the computation."""
    import phoebe

    many = [i / 400 for i in range(400)]
    session.dispatch("add_dataset", {"kind": "lc", "compute_times": many, "dataset": "lc01"})
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            session.dispatch("run_compute", {})
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert session.bundle.models == []
    assert phoebe.conf.interactive_constraints is True
    session.dispatch("set_value", {"twig": "compute_times@lc01", "value": TIMES})
    result = session.dispatch("run_compute", {})
    assert len(result["model"]["lc01"]["fluxes"]) == 11
