"""visible_if: only PHOEBE's own grammar and read-only hierarchy predicates.

PHOEBE evaluates ``hierarchy.<name>:<value>`` as ``getattr(hierarchy, name)(component)``
and ``qualifier:<tag>`` as ``getattr(parameter, tag)`` whenever it filters with
``check_visible``; ``hierarchy.save:x`` in 2,000 bundle parameters wrote 2,001 files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from phoebe_kernel_worker.commands import PhoebeSession
from phoebe_kernel_worker.errors import CommandError, UnsafeInput
from phoebe_kernel_worker.safety.visible_if import HIERARCHY_PREDICATES, check_visible_if

pytestmark = pytest.mark.phoebe

REFUSED = [
    ("hierarchy.save:x", "'hierarchy.save' is not allowed"),
    ("hierarchy.set_value:x", "'hierarchy.set_value' is not allowed"),
    ("hierarchy.open:True", "'hierarchy.open' is not allowed"),
    ("hierarchy.set_uniqueid:True", "'hierarchy.set_uniqueid' is not allowed"),
    ("hierarchy.__delattr__:True", "'hierarchy.__delattr__' is not allowed"),
    ("xhierarchy.is_binary:True", "'xhierarchy.is_binary' is not allowed"),
    ("hierarchy.is_binary:maybe", "compares with True or False only"),
    ("teff:<__class__>", "'<__class__>' is not allowed"),
    ("teff:<is_visible>", "'<is_visible>' is not allowed"),
    ("[__dict__]teff:1", "invalid [tag] prefix"),
    ("teff:1:2", "must be 'qualifier:value'"),
    ("teff", "must be 'qualifier:value'"),
    ("te.ff:1", "invalid qualifier"),
    ("teff:", "invalid value"),
    ("teff:a'b", "invalid value"),
    ("a:1," * 17, "more than 16 conditions"),
]


def _phoebe_visible_ifs(bundle: Any) -> set[str]:
    return {p["visible_if"] for p in bundle.to_json() if p.get("visible_if")}


def test_every_visible_if_phoebe_writes_passes(phoebe_session: PhoebeSession) -> None:
    """All of PHOEBE's own strings (datasets, solvers, figures) fit the grammar."""
    bundle = phoebe_session.bundle.copy()
    for kind in ("lc", "rv", "orb", "mesh"):
        bundle.add_dataset(kind, compute_times=[0.0, 1.0])
    bundle.add_dataset("lp", compute_times=[0.0], wavelengths=[500.0, 501.0])
    for solver in ("emcee", "nelder_mead", "lc_periodogram", "lc_geometry", "ebai"):
        bundle.add_solver(solver)
    bundle.add_figure("lc")
    strings = _phoebe_visible_ifs(bundle)
    assert len(strings) > 100
    used = {s.split(":")[0].split(".")[1] for s in strings if s.startswith("hierarchy.")}
    assert used <= HIERARCHY_PREDICATES
    for text in strings:
        check_visible_if(text)


@pytest.mark.parametrize(("text", "message"), REFUSED)
def test_grammar_refuses(text: str, message: str) -> None:
    with pytest.raises(UnsafeInput) as info:
        check_visible_if(text)
    assert message in str(info.value)


def _bundle_text(session: PhoebeSession, visible_if: str, count: int) -> str:
    params = json.loads(session.dispatch("get_bundle")["bundle"])
    stars = [p for p in params if p.get("context") == "component" and p.get("kind") == "star"]
    for param in stars[:count]:
        param["visible_if"] = visible_if
    return json.dumps(params)


@pytest.mark.parametrize(
    "visible_if",
    ["hierarchy.save:x", "hierarchy.set_value:x", "hierarchy.open:x", "teff:<__class__>"],
)
def test_load_bundle_refuses_method_calls(
    phoebe_session: PhoebeSession, visible_if: str, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    text = _bundle_text(phoebe_session, visible_if, count=50)
    with pytest.raises(UnsafeInput) as info:
        phoebe_session.dispatch("load_bundle", {"bundle": text})
    assert "visible_if" in str(info.value) and "is not allowed" in str(info.value)
    phoebe_session.bundle.filter(context="component")  # check_visible runs every visible_if
    assert os.listdir(tmp_path) == []
    assert phoebe_session.dispatch("get_value", {"twig": "period@binary"}) == 1.0


def test_load_bundle_keeps_phoebe_visible_ifs(phoebe_session: PhoebeSession) -> None:
    text = _bundle_text(phoebe_session, "hierarchy.is_meshable:True", count=1)
    assert phoebe_session.dispatch("load_bundle", {"bundle": text}) == {}
    assert phoebe_session.dispatch("get_value", {"twig": "period@binary"}) == 1.0


def test_attach_parameters_refuses_visible_if(phoebe_session: PhoebeSession) -> None:
    spec = {"ptype": "bool", "qualifier": "vis", "value": True, "visible_if": "hierarchy.save:x"}
    with pytest.raises(CommandError) as info:
        phoebe_session.dispatch("attach_parameters", {"parameters": [spec]})
    assert str(info.value) == (
        "attach_parameters: parameter #0: keys ['visible_if'] are not accepted for bool"
    )
