"""The three PHOEBE Lab faults of issue 18, at the worker (real PHOEBE, in process).

PHOEBE Lab (aprsa/phoebe-lab) sends ``attach_parameters`` specs with PHOEBE's
``copy_for`` and the reserved ``_default`` dataset label, ``get_parameter`` with a
widget's ``options=[...]`` among the filter keywords, and morphology names in title
case.  The old phoebe-server worker handed all three straight to PHOEBE; these tests
pin down that the worker now gives the same answers, and that the new tolerance does
not open anything the sandbox closes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from phoebe_kernel_worker.commands import PhoebeSession
from phoebe_kernel_worker.errors import CommandError, UnsafeInput

from ..lab_calls import LAB_UI_PARAMETERS


@pytest.fixture
def session(phoebe_session: PhoebeSession) -> Iterator[PhoebeSession]:
    """The module's session, reset to the default detached bundle after each test."""
    yield phoebe_session
    phoebe_session.dispatch("new_bundle", {})


def ui_twigs(session: PhoebeSession) -> set[str]:
    """``qualifier@dataset`` of every ui parameter (``_default`` templates included)."""
    params = session.bundle.filter(context="ui", check_visible=False, check_default=False)
    return {f"{p.qualifier}@{p.dataset}" for p in params.to_list() if p.dataset}


def test_lab_ui_parameters_attach_and_copy_per_dataset(session: PhoebeSession) -> None:
    result = session.dispatch("attach_parameters", {"parameters": LAB_UI_PARAMETERS})
    assert len(result["unique_ids"]) == 6
    assert session.dispatch("get_value", {"twig": "project_name@ui"}) == "Unnamed Project"
    # the _default templates are hidden like PHOEBE's own, as in PHOEBE
    template = {"qualifier": "phase_min", "dataset": "_default", "context": "ui"}
    assert session.dispatch("get_value", template) == -0.5
    with pytest.raises(ValueError, match="0 results found"):
        session.dispatch("get_value", {"twig": "phase_min@ui"})

    session.dispatch("add_dataset", {"kind": "lc", "dataset": "ds01", "compute_times": [0.0]})
    session.dispatch("add_dataset", {"kind": "rv", "dataset": "rv01", "compute_times": [0.0]})
    session.dispatch("add_dataset", {"kind": "orb", "dataset": "orb01", "compute_times": [0.0]})
    assert ui_twigs(session) == {
        f"{q}@{ds}"
        for q in ("phase_min", "phase_max", "phase_length")
        for ds in ("_default", "ds01", "rv01")  # not for the orb dataset (kind not listed)
    }
    assert session.dispatch("get_value", {"twig": "phase_min@ds01@ui"}) == -0.5
    assert session.dispatch("get_value", {"twig": "phase_length@rv01@ui"}) == 201
    session.dispatch("set_value", {"twig": "phase_min@ds01@ui", "value": -0.25})
    assert session.dispatch("get_value", {"twig": "phase_min@ds01@ui"}) == -0.25
    assert session.dispatch("get_value", {"twig": "phase_min@rv01@ui"}) == -0.5

    # removing a dataset removes its copies, and re-adding it copies afresh
    session.dispatch("remove_dataset", {"dataset": "ds01"})
    assert "phase_min@ds01" not in ui_twigs(session)
    session.dispatch("add_dataset", {"kind": "lc", "dataset": "ds01", "compute_times": [0.0]})
    assert session.dispatch("get_value", {"twig": "phase_min@ds01@ui"}) == -0.5


def test_copy_for_survives_a_bundle_round_trip(session: PhoebeSession) -> None:
    session.dispatch("attach_parameters", {"parameters": LAB_UI_PARAMETERS})
    saved = session.dispatch("save_bundle", {})["bundle"]
    session.dispatch("new_bundle", {})
    session.dispatch("load_bundle", {"bundle": saved})
    session.dispatch("add_dataset", {"kind": "lc", "dataset": "ds02", "compute_times": [0.0]})
    assert session.dispatch("get_value", {"twig": "phase_max@ds02@ui"}) == 0.5


@pytest.mark.parametrize(
    ("copy_for", "reason"),
    [
        ({"qualifier": "*"}, "copy_for keys must be among"),
        ({"uniqueid": "*", "dataset": "*"}, "copy_for keys must be among"),
        ({"__class__": "*"}, "copy_for keys must be among"),
        ({"kind": "*", "dataset": "*"}, "copy_for kind must be one of"),
        ({"kind": ["lc", "exec"], "dataset": "*"}, "copy_for kind must be one of"),
        ({"kind": ["lc"], "dataset": ["ds01", "../x"]}, "copy_for dataset must be '*' or labels"),
        ({"kind": ["lc"], "dataset": {"kind": "lc"}}, "copy_for dataset must be '*' or labels"),
        ({"kind": ["lc"], "dataset": []}, "copy_for dataset must name 1-64 values"),
        ({"context": "dataset", "dataset": "*"}, "copy_for keys must be among"),
        ("lc", "copy_for must be an object"),
        (["kind", "lc"], "copy_for must be an object"),
    ],
)
def test_copy_for_shape_is_checked(copy_for: Any, reason: str, session: PhoebeSession) -> None:
    spec = {"ptype": "float", "qualifier": "x", "value": 1.0, "copy_for": copy_for}
    with pytest.raises(UnsafeInput, match=re.escape(reason)):
        session.dispatch("attach_parameters", {"parameters": [spec]})
    assert session.bundle.filter(context="ui", check_visible=False).qualifiers == []


def test_default_label_is_the_only_reserved_label_accepted(session: PhoebeSession) -> None:
    for bad in ("_other", "_", "__default", "_default_"):
        spec = {"ptype": "float", "qualifier": "x", "value": 1.0, "dataset": bad}
        with pytest.raises(CommandError, match="dataset must be 1-64 letters"):
            session.dispatch("attach_parameters", {"parameters": [spec]})
    spec = {"ptype": "bool", "qualifier": "shown", "value": True, "component": "_default"}
    assert len(session.dispatch("attach_parameters", {"parameters": [spec]})["unique_ids"]) == 1


def test_loaded_bundle_copy_for_is_checked(session: PhoebeSession) -> None:
    import json

    params = json.loads(session.dispatch("save_bundle", {})["bundle"])
    atm = next(p for p in params if p.get("qualifier") == "atm" and p.get("copy_for"))
    assert atm["copy_for"] == {"kind": ["star"], "component": "*"}  # PHOEBE's own shape
    atm["copy_for"] = {"kind": ["star"], "component": "*", "qualifier": "*", "uniqueid": "*"}
    with pytest.raises(UnsafeInput, match="copy_for keys must be among"):
        session.dispatch("load_bundle", {"bundle": json.dumps(params)})


@pytest.mark.parametrize("contact", [False, True])
def test_phoebe_own_copy_for_shapes_still_load(contact: bool) -> None:
    """Every copy_for PHOEBE writes (all dataset kinds, three backends, solvers, a spot)."""
    import json

    import phoebe

    from phoebe_kernel_worker.safety.bundle import validate_bundle_json

    b = phoebe.default_binary(contact_binary=contact)
    for kind in ("lc", "rv", "orb", "mesh"):
        b.add_dataset(kind, compute_times=[0.0])
    b.add_dataset("lp", compute_times=[0.0], wavelengths=[500.0])
    b.add_compute("legacy")
    b.add_compute("ellc")
    if not contact:
        b.add_feature("spot", component="primary")
    for solver in ("differential_corrections", "emcee", "lc_geometry"):
        b.add_solver(solver)
    parsed = json.loads(
        json.dumps(b.to_json(incl_uniqueid=True)), object_pairs_hook=phoebe.utils.parse_json
    )
    shapes = {json.dumps(p["copy_for"], sort_keys=True) for p in parsed if p.get("copy_for")}
    assert '{"component": {"kind": "star"}, "dataset": {"kind": "rv"}}' in shapes
    assert '{"context": "dataset", "dataset": "*"}' in shapes
    validate_bundle_json(parsed)


def test_get_parameter_tolerates_keywords_phoebe_ignores(session: PhoebeSession) -> None:
    lab_call = {
        "qualifier": "deriv_method",
        "context": "solver",
        "kind": "differential_corrections",
        "solver": "dc",
        "options": ["symmetric", "asymmetric"],
    }
    result = session.dispatch("get_parameter", lab_call)
    assert result["qualifier"] == "deriv_method" and result["Class"] == "ChoiceParameter"
    # the same as PHOEBE's own answer with the extra keyword
    direct = session.bundle.get_parameter(**lab_call)
    assert result["uniqueid"] == direct.uniqueid
    # other filter-taking commands tolerate it the same way
    uid = result["uniqueid"]
    assert session.dispatch("is_parameter_constrained", {"uniqueid": uid, "options": [1]}) is False
    assert session.dispatch("get_value", {"uniqueid": uid, "label": "Derivatives"}) == "symmetric"
    assert session.dispatch("get_uniqueid", {"twig": "deriv_method@dc", "widget": "x"}) == uid
    session.dispatch("set_value", {"uniqueid": uid, "value": "asymmetric", "classes": "w-full"})
    assert session.bundle.get_value(uniqueid=uid) == "asymmetric"


@pytest.mark.parametrize(
    ("command", "kwargs", "reason"),
    [
        ("get_parameter", {"twig": "period@binary", "fname": "x"}, "'fname' is not allowed"),
        ("get_parameter", {"twig": "period@binary", "server": "x"}, "'server' is not allowed"),
        ("get_parameter", {"twig": "period@binary", "uniquetwig": "x"}, "unknown argument"),
        ("get_parameter", {"twig": "period@binary", "value": 1.0}, "unknown argument 'value'"),
        ("get_value", {"twig": "period@binary", "bundle": "x"}, "unknown argument 'bundle'"),
        ("get_value", {"twig": "period@binary", "parent_ps": "x"}, "unknown argument"),
        ("set_value", {"twig": "period@binary", "value": 1.0, "force": True}, "unknown argument"),
        (
            "set_value",
            {"twig": "period@binary", "value": 1.0, "ignore_readonly": True},
            "'ignore_readonly' is not allowed",
        ),
        ("get_parameter", {"twig": "period@binary", "a b": 1}, "invalid argument name"),
        ("get_parameter", {"twig": "period@binary", "__init__()": 1}, "invalid argument name"),
    ],
)
def test_keywords_phoebe_acts_on_stay_refused(
    command: str, kwargs: dict[str, Any], reason: str, session: PhoebeSession
) -> None:
    with pytest.raises(CommandError, match=re.escape(reason)):
        session.dispatch(command, kwargs)
    assert session.bundle.get_value("period@binary") == 1.0


@pytest.mark.parametrize(
    ("name", "envelopes", "semidetached"),
    [
        ("Detached", [], False),
        ("Semi-detached", [], True),
        ("Contact", ["contact_envelope"], False),
        ("CONTACT", ["contact_envelope"], False),
        ("semi-DETACHED", [], True),
    ],
)
def test_morphology_names_are_case_insensitive(
    name: str, envelopes: list[str], semidetached: bool, session: PhoebeSession
) -> None:
    for command in ("set_morphology", "change_morphology", "new_bundle"):
        assert session.dispatch(command, {"morphology": name}) == {}
        assert session.bundle.hierarchy.get_envelopes() == envelopes
        funcs = session.bundle.filter(context="constraint", check_visible=False).to_list()
        assert any(p.constraint_func == "semidetached" for p in funcs) is semidetached
        assert session.bundle.solvers == ["dc"]


def test_unknown_morphologies_are_still_refused(session: PhoebeSession) -> None:
    with pytest.raises(ValueError, match="Unknown morphology: triple"):
        session.dispatch("set_morphology", {"morphology": "Triple"})
    with pytest.raises(CommandError, match="morphology must be one of"):
        session.dispatch("set_morphology", {"morphology": 3})
