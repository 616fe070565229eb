"""Loaded bundles (safety.bundle): ``load_bundle`` refuses every hostile variant of a bundle.

Each mutation of a real bundle's JSON is refused before ``phoebe.load`` sees it and the
session keeps its old bundle; real bundles PHOEBE writes pass and reload.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from phoebe_kernel_worker.commands import PhoebeSession, build_bundle
from phoebe_kernel_worker.errors import CommandError, UnsafeInput
from phoebe_kernel_worker.safety import bundle as bundle_safety

from .hostile import SENTINEL_PERIOD, assert_session_healthy

pytestmark = pytest.mark.phoebe


@pytest.fixture(scope="module")
def bundle_list(pristine: PhoebeSession) -> list[dict[str, Any]]:
    """A real bundle (with an lc dataset) as parsed JSON, the base of the hostile variants."""
    bundle = build_bundle("detached")
    bundle.add_dataset("lc", compute_times=[0.0, 0.5], dataset="lc01")
    parsed: list[dict[str, Any]] = json.loads(json.dumps(bundle.to_json(incl_uniqueid=True)))
    bundle_safety.validate_bundle_json(parsed)
    return parsed


def find(params: list[dict[str, Any]], **tags: Any) -> dict[str, Any]:
    matches = [p for p in params if all(p.get(k) == v for k, v in tags.items())]
    assert len(matches) == 1, tags
    return matches[0]


def _constraint_payload(params: list[dict[str, Any]], marker: Path) -> None:
    find(params, qualifier="sma", component="binary", context="constraint")["value"] = (
        f"{{period@binary}} * 0 + 1 + (__import__('builtins').open({str(marker)!r}, 'w') and 0)"
    )


def _add(params: list[dict[str, Any]], extra: dict[str, Any]) -> None:
    params.append(extra)


MUTATIONS: dict[str, Callable[[list[dict[str, Any]], Path], None]] = {
    "constraint payload": _constraint_payload,
    "constraint_func": lambda p, m: find(
        p, qualifier="sma", component="binary", context="constraint"
    ).update(constraint_func="__init__"),
    "constraint_kwargs quote": lambda p, m: find(
        p, qualifier="sma", component="binary", context="constraint"
    ).update(constraint_kwargs={"component": "binary'"}),
    "job parameter": lambda p, m: _add(
        p, {"Class": "JobParameter", "qualifier": "detached_job", "context": "model", "value": "x"}
    ),
    "code parameter": lambda p, m: _add(
        p,
        {
            "Class": "CodeParameter",
            "qualifier": "custom_code",
            "context": "feature",
            "value": f"    x = open({str(m)!r}, 'w')\n",
        },
    ),
    "class lookup": lambda p, m: _add(
        p, {"Class": "ParameterSet", "qualifier": "x", "context": "ui"}
    ),
    "private key": lambda p, m: find(
        p, qualifier="period", component="binary", context="component"
    ).update(_bundle=None),
    "server context": lambda p, m: _add(
        p,
        {
            "Class": "StringParameter",
            "qualifier": "crimpl_name",
            "context": "server",
            "server": "remote",
            "value": "x",
        },
    ),
    "use_server": lambda p, m: find(p, qualifier="use_server", compute="phoebe01").update(
        value="remote", choices=["none", "remote"]
    ),
    "jktebop": lambda p, m: [x.update(kind="jktebop") for x in p if x.get("compute") == "phoebe01"],
    "dataset kind": lambda p, m: [
        x.update(kind="__class__")
        for x in p
        if x.get("dataset") == "lc01" and x.get("context") == "dataset"
    ],
    "distl function": lambda p, m: _add(
        p,
        {
            "Class": "DistributionParameter",
            "qualifier": "teff",
            "component": "primary",
            "distribution": "d1",
            "context": "distribution",
            "value": {"distl": "Function", "func": "builtins.open", "args": [str(m), "w"]},
        },
    ),
    "distl quote": lambda p, m: _add(
        p,
        {
            "Class": "DistributionParameter",
            "qualifier": "teff",
            "component": "primary",
            "distribution": "d1",
            "context": "distribution",
            "value": {"distl": "Gaussian", "loc": 1.0, "scale": 1.0, "label": "a') + open('x"},
        },
    ),
    "nparray huge": lambda p, m: find(p, qualifier="compute_times", context="dataset").update(
        value={"nparray": "linspace", "start": 0, "stop": 1, "num": 10**12}
    ),
    "nparray class": lambda p, m: find(p, qualifier="compute_times", context="dataset").update(
        value={"nparray": "ArrayWrapper", "value": [1]}
    ),
    "choice quote": lambda p, m: find(p, qualifier="phases_period", context="dataset").update(
        value="period') + open('x", choices=["period", "period') + open('x"]
    ),
    "twig brace": lambda p, m: find(
        p, qualifier="period", component="binary", context="component"
    ).update(component="binary}{"),
    "latexfmt attribute": lambda p, m: find(
        p, qualifier="period", component="binary", context="component"
    ).update(latexfmt="{component.__class__.__mro__}"),
    "old version": lambda p, m: find(p, qualifier="phoebe_version").update(value="2.3.60"),
    "no version": lambda p, m: p.remove(find(p, qualifier="phoebe_version")),
    "duplicate uniqueid": lambda p, m: find(
        p, qualifier="period", component="binary", context="component"
    ).update(
        uniqueid=find(p, qualifier="incl", component="binary", context="component")["uniqueid"]
    ),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_load_bundle_refuses(
    mutation: str, session: PhoebeSession, bundle_list: list[dict[str, Any]], tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    hostile = copy.deepcopy(bundle_list)
    MUTATIONS[mutation](hostile, marker)
    old_bundle = session.bundle
    with pytest.raises(UnsafeInput):
        session.dispatch("load_bundle", {"bundle": json.dumps(hostile)})
    assert session.bundle is old_bundle
    assert_session_healthy(session, marker)


def test_load_bundle_refuses_garbage(
    session: PhoebeSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    for bad in ["not json", "[[[[", json.dumps({"a": 1}), json.dumps([]), "[" * 100_000]:
        with pytest.raises(CommandError):
            session.dispatch("load_bundle", {"bundle": bad})
    with pytest.raises(CommandError):
        session.dispatch("load_bundle", {"bundle": [1, 2]})
    monkeypatch.setattr(bundle_safety, "MAX_BUNDLE_PARAMETERS", 10)
    real = session.dispatch("get_bundle", {})["bundle"]
    with pytest.raises(UnsafeInput, match="more than 10"):
        session.dispatch("load_bundle", {"bundle": real})
    assert session.dispatch("get_value", {"twig": "period@binary"}) == SENTINEL_PERIOD


def test_real_bundles_round_trip_through_validation(fresh_session: PhoebeSession) -> None:
    """A rich bundle (datasets, model, solution, distributions, spot) passes and reloads."""
    import numpy as np
    import phoebe

    session = fresh_session
    d = session.dispatch
    times = list(np.linspace(0.0, 1.0, 11))
    d("add_dataset", {"kind": "lc", "compute_times": times, "dataset": "lc01"})
    d("add_dataset", {"kind": "rv", "compute_times": [0.0, 0.25], "dataset": "rv01"})
    d("add_dataset", {"kind": "mesh", "compute_times": [0.0], "dataset": "mesh01"})
    session.bundle.add_distribution("teff@primary", phoebe.gaussian_around(100), distribution="d1")
    session.bundle.add_distribution("incl@binary", phoebe.uniform(80, 90), distribution="d1")
    session.bundle.add_solver("emcee", solver="em")
    for ds in ("rv01", "mesh01"):
        session.bundle.disable_dataset(ds)
    fluxes = d("run_compute", {})["model"]["lc01"]["fluxes"]
    d("set_value", {"twig": "times@lc01", "context": "dataset", "value": times})
    d("set_value", {"twig": "fluxes@lc01", "context": "dataset", "value": list(fluxes)})
    d("set_value", {"twig": "sigmas@lc01", "context": "dataset", "value": list(0.01 * fluxes)})
    d("set_value", {"twig": "fit_parameters@dc", "value": ["teff@primary"]})
    d("run_solver", {"solver": "dc", "solution": "sol"})
    session.bundle.add_spot(component="primary", feature="spot01")
    d("attach_parameters", {"parameters": [{"ptype": "bool", "qualifier": "shown", "value": True}]})

    text = d("get_bundle", {})["bundle"]
    bundle_safety.validate_bundle_json(json.loads(text))
    d("set_value", {"twig": "period@binary", "value": 9.5})
    d("load_bundle", {"bundle": text})
    assert d("get_value", {"twig": "period@binary"}) == SENTINEL_PERIOD
    assert sorted(session.bundle.datasets) == ["lc01", "mesh01", "rv01"]
    assert session.bundle.solutions == ["sol"]
    assert session.bundle.models == ["latest"]
    assert d("get_value", {"twig": "shown@ui"}) is True
    assert os.listdir(session.session_dir) == []
