"""Nothing a client sends may run code, start processes or write files.

Every hostile payload here would create a marker file if it were executed; each test
asserts the command was refused with UnsafeInput, that the marker does not exist even
after PHOEBE re-evaluated its constraints, and that the session still works.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from phoebe_kernel_worker import bundle_safety
from phoebe_kernel_worker.commands import PhoebeSession, build_bundle
from phoebe_kernel_worker.errors import CommandError, UnsafeInput
from phoebe_kernel_worker.safety import (
    ALLOWED_FUNCTIONS,
    analyze_expression,
    is_quote_safe,
    validate_expression,
)

pytestmark = pytest.mark.phoebe

SENTINEL_PERIOD = 2.75

# Each payload creates {marker} when evaluated by Python.
CODE_PAYLOADS = [
    "__import__('builtins').open('{marker}', 'w').close()",
    "[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'catch_warnings']"
    "[0]()._module.__builtins__['open']('{marker}', 'w').close()",
    "(lambda: __import__('builtins').open('{marker}', 'w').close())()",
    "f\"{{__import__('builtins').open('{marker}', 'w').close()}}\"",
    "[__import__('builtins').open('{marker}', 'w').close() for _ in (1,)]",
    "(o := __import__('builtins').open)('{marker}', 'w').close()",
    "exec(\"open('{marker}', 'w').close()\")",
    "eval(\"open('{marker}', 'w').close()\")",
    "__builtins__['open']('{marker}', 'w').close()",
    "1 if open('{marker}', 'w').close() else 0",
    "{{period@binary}} + (open('{marker}', 'w').close() or 0)",
    "sin({{period@binary}}) + open('{marker}', 'w').close()",
]

# Refused although harmless or broken on their own: outside the allow-list.
OTHER_REFUSED = [
    "{period@binary}.real",
    "{period@binary}[0]",
    "sin(x={period@binary})",
    "sin(*[{period@binary}])",
    "{period@binary} and 1",
    "not {period@binary}",
    "~1",
    "'text'",
    "b'bytes'",
    "True",
    "1j",
    "__builtins__",
    "print",
    "newton(sin, 1.0)",
    "distl_from_json('{}')",
    "{period@binary}(1)",
    "{per'iod@binary} * 2",
    "{{period@binary}}",
    "{period@binary}}",
    "9 ** 9 ** 9",
    "(9 ** 999) ** 999",
    "{period@binary} ** 100000",
    "\uff45\uff58\uff45\uff43('1')",  # fullwidth 'exec', NFKC-normalised by Python
    "1 +\n2",
    "x" * 5000,
    "10 ** 10 ** 2 * 1",
]

ACCEPTED = [
    "{sma@binary} * sin({incl@binary})",
    "(({esinw@binary} ** 2.000000) + ({ecosw@binary} ** 2.000000)) ** 5.00000000000000000e-01",
    "times_to_phases({compute_times@lc01}, {phases_period@lc01}, {period@binary})",
    "-{a@b} + +1.5e3 // 2 % 3 - abs({a@b})",
    "{a@b} < 1 <= 2 != {c@d}",
    "log10({a@b}) * pi / e",
    "{x@y} ** 3",
    "10.0 ** 2",
]


def test_allow_list_matches_phoebe_constraint_functions() -> None:
    """Every function PHOEBE's built-in constraints may call is allowed, minus the risky ones."""
    import types

    from phoebe.constraints import builtin

    phoebe_funcs = {
        name
        for name in dir(builtin)
        if isinstance(getattr(builtin, name), types.FunctionType) and not name.startswith("_")
    }
    refused = {"distl_from_json", "newton", "bisect"}
    assert refused <= phoebe_funcs
    assert phoebe_funcs - refused <= ALLOWED_FUNCTIONS
    assert refused.isdisjoint(ALLOWED_FUNCTIONS)
    assert {"eval", "exec", "open", "getattr", "__import__"}.isdisjoint(ALLOWED_FUNCTIONS)


@pytest.mark.parametrize("expr", ACCEPTED)
def test_accepted_expressions(expr: str) -> None:
    validate_expression(expr)


@pytest.mark.parametrize("payload", CODE_PAYLOADS + OTHER_REFUSED)
def test_refused_expressions(payload: str, tmp_path: Path) -> None:
    expr = payload.format(marker=tmp_path / "marker") if "{marker}" in payload else payload
    with pytest.raises(UnsafeInput):
        validate_expression(expr)


def test_code_payloads_are_real(tmp_path: Path) -> None:
    """The payloads really run code when Python evaluates them (so refusing them matters)."""
    for index, payload in enumerate(CODE_PAYLOADS[:9]):
        marker = tmp_path / f"m{index}"
        exec(payload.format(marker=marker), {})  # noqa: S102 - proving the payloads work
        assert marker.exists(), payload


def test_expression_info_reports_placement() -> None:
    info = analyze_expression("times_to_phases({t@d}, {p@d}) * {q@b} + sin({q@b})")
    assert info.twigs == ("t@d", "p@d", "q@b", "q@b")
    assert info.call_argument_twigs == {"t@d", "p@d", "q@b"}
    assert info.other_twigs == {"q@b"}
    assert info.has_calls


def test_is_quote_safe() -> None:
    assert is_quote_safe("Johnson:V")
    assert is_quote_safe("t0_supconj")
    for bad in ["a'b", "a\\b", "a\nb", "\u00e9", 5, "x" * 2000]:
        assert not is_quote_safe(bad)


# ----------------------------------------------------------------------------- with PHOEBE


@pytest.fixture(scope="module")
def pristine(phoebe_session: PhoebeSession) -> PhoebeSession:
    """The module's session with period@binary at SENTINEL_PERIOD; tests keep it that way."""
    phoebe_session.dispatch("set_value", {"twig": "period@binary", "value": SENTINEL_PERIOD})
    return phoebe_session


@pytest.fixture
def session(pristine: PhoebeSession) -> PhoebeSession:
    """The shared session; refused commands must leave it unchanged (checked by tests)."""
    return pristine


@pytest.fixture
def fresh_session(pristine: PhoebeSession) -> Iterator[PhoebeSession]:
    """The shared session for a test that changes the bundle; reset afterwards."""
    yield pristine
    pristine.dispatch("new_bundle", {})
    pristine.dispatch("set_value", {"twig": "period@binary", "value": SENTINEL_PERIOD})


def assert_session_healthy(session: PhoebeSession, marker: Path) -> None:
    """The marker was not created, even after PHOEBE evaluated every constraint again."""
    session.bundle.run_delayed_constraints()
    for constraint in session.bundle.filter(context="constraint").to_list():
        constraint.get_result()
    assert session.dispatch("get_value", {"twig": "period@binary"}) == SENTINEL_PERIOD
    assert session.dispatch("ping", {}) == {"status": "ready"}
    assert not marker.exists()


@pytest.mark.parametrize("morphology", ["detached", "semi-detached", "contact"])
def test_every_builtin_expression_passes(morphology: str, phoebe_session: PhoebeSession) -> None:
    """Everything PHOEBE itself produces passes the allow-list and the eval guards."""
    bundle = build_bundle(morphology)
    bundle.add_dataset("lc", compute_phases=[0.0, 0.5], dataset="lcphases")
    if morphology == "detached":
        for kind in ("lc", "rv", "orb", "mesh"):
            bundle.add_dataset(kind, compute_times=[0.0, 0.25], dataset=f"{kind}01")
        bundle.add_dataset("lp", times=[0.0], wavelengths=[549.0, 550.0], dataset="lp01")
        for solver in ("emcee", "nelder_mead", "lc_geometry", "lc_periodogram", "ebai"):
            bundle.add_solver(solver)
        bundle.flip_constraint("esinw", solve_for="ecc")
        bundle.flip_constraint("ecosw", solve_for="per0")
        bundle.flip_constraint("teffratio", solve_for="teff@secondary")
        bundle.flip_constraint("requivsumfrac", solve_for="requiv@primary")
        bundle.flip_constraint("requivratio", solve_for="requiv@secondary")
        bundle.flip_constraint("asini@binary", solve_for="incl@binary")
    constraints = bundle.filter(context="constraint", check_visible=False).to_list()
    assert len(constraints) > 20
    for constraint in constraints:
        validate_expression(constraint.get_value())
        with warnings.catch_warnings():  # some flipped values are out of range (nan)
            warnings.simplefilter("ignore", RuntimeWarning)
            constraint.get_result()  # runs through the installed guards


def test_raw_phoebe_evaluates_injected_constraint(tmp_path: Path) -> None:
    """Without this package's checks PHOEBE really runs a constraint payload."""
    marker = tmp_path / "raw"
    payload = f"(__import__('builtins').open({str(marker)!r}, 'w').close() or 0)"
    code = f"""
import os
os.environ['PHOEBE_ENABLE_ONLINE_PASSBANDS'] = 'FALSE'
import phoebe
b = phoebe.default_binary()
b.set_value('mass@primary@constraint', value="{{period@binary}} * 0 + 1 + {payload}")
b.set_value('period@binary', 2.0)
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    assert marker.exists()


@pytest.mark.parametrize("payload", CODE_PAYLOADS)
def test_set_value_refuses_constraint_payloads(
    payload: str, session: PhoebeSession, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    before = session.dispatch("get_value", {"twig": "sma@binary@constraint"})
    with pytest.raises(UnsafeInput):
        session.dispatch(
            "set_value", {"twig": "sma@binary@constraint", "value": payload.format(marker=marker)}
        )
    assert session.dispatch("get_value", {"twig": "sma@binary@constraint"}) == before
    assert_session_healthy(session, marker)


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("{comments@phoebe01} * 1.0", "StringParameter 'comments@phoebe01' cannot be used"),
        (  # a ChoiceParameter outside a call argument
            "{atm@primary@phoebe01} * 1.0",
            "choice parameter 'atm@primary@phoebe01' may only be a function argument",
        ),
        ("{hierarchy@system} * 1.0", "HierarchyParameter 'hierarchy@system' cannot be used"),
        (
            "{ntriangles@primary@phoebe01} ** 2",
            "IntParameter 'ntriangles@primary@phoebe01' cannot be used",
        ),
        ("{sma@binary@constraint} * 1.0", "constraint parameters cannot be constraint variables"),
    ],
)
def test_constraint_variables_must_be_numeric(
    expr: str, reason: str, session: PhoebeSession
) -> None:
    with pytest.raises(UnsafeInput, match=re.escape(reason)):
        session.dispatch("set_value", {"twig": "sma@binary@constraint", "value": expr})


def test_constraint_variables_cannot_be_client_parameters(fresh_session: PhoebeSession) -> None:
    specs = [
        {"ptype": "string", "qualifier": "note", "value": "x') or open('m','w') or ('"},
        {"ptype": "float", "qualifier": "level", "value": 1.0},
    ]
    fresh_session.dispatch("attach_parameters", {"parameters": specs})
    for expr in ("{note@ui} * 1.0", "{level@ui} * 1.0"):
        with pytest.raises(UnsafeInput, match="ui parameters cannot be constraint variables"):
            fresh_session.dispatch("set_value", {"twig": "sma@binary@constraint", "value": expr})


def test_guard_blocks_expression_planted_past_the_checks(
    session: PhoebeSession, tmp_path: Path
) -> None:
    """Defence in depth: an expression stored behind the command checks' back never runs."""
    marker = tmp_path / "planted"
    param = session.bundle.get_parameter("sma@binary@constraint")
    saved = param._value
    param._value = f"__import__('builtins').open({str(marker)!r}, 'w').close()"
    try:
        with pytest.raises(UnsafeInput):
            param.get_result()
        # PHOEBE logs (and swallows) failing constraints when a variable changes
        session.dispatch("set_value", {"twig": "mass@secondary", "value": 0.8})
    finally:
        param._value = saved
    assert not marker.exists()
    assert_session_healthy(session, marker)


def test_guard_blocks_quote_injection_through_choice_value(
    fresh_session: PhoebeSession, tmp_path: Path
) -> None:
    """PHOEBE pastes choice values between quotes into eval'ed text; a quote must not pass."""
    session = fresh_session
    marker = tmp_path / "choice"
    session.dispatch("add_dataset", {"kind": "lc", "compute_times": [0.0, 0.5], "dataset": "lc01"})
    skip = {"check_visible": False, "check_default": False}
    choice = session.bundle.get_parameter("phases_period@lc01", context="dataset", **skip)
    constraint = session.bundle.get_parameter("compute_phases@lc01", context="constraint", **skip)
    saved = choice._value
    choice._value = f"period') + str(open({str(marker)!r}, 'w').close()) + ('"
    try:
        with pytest.raises(UnsafeInput):
            constraint.get_result()
    finally:
        choice._value = saved
    assert not marker.exists()
    assert constraint.get_result() is not None


def test_code_and_job_parameters_are_disabled(session: PhoebeSession, tmp_path: Path) -> None:
    from phoebe.parameters import CodeParameter, JobParameter

    marker = tmp_path / "code"
    source = f"    x = open({str(marker)!r}, 'w').close()\n"
    with pytest.raises(UnsafeInput):
        CodeParameter.get_class_from_code(source)
    with pytest.raises(UnsafeInput):
        CodeParameter(qualifier="custom_code", value=source)
    with pytest.raises(UnsafeInput):
        JobParameter(session.bundle, job_name="job")
    assert not marker.exists()


def test_scripts_and_distl_functions_are_disabled(
    session: PhoebeSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phoebe.dependencies import distl, nparray

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafeInput):
        session.bundle.export_compute("script.py")
    marker = tmp_path / "distl"
    with pytest.raises(UnsafeInput):
        distl.from_dict(
            {"distl": "Function", "func": "builtins.open", "args": [str(marker), "w"], "kwargs": {}}
        )
    with pytest.raises(UnsafeInput):
        distl.from_json(json.dumps({"distl": "Gaussian", "func": "builtins.open"}))
    with pytest.raises(UnsafeInput):
        nparray.from_dict({"nparray": "linspace", "start": 0, "stop": 1, "num": 10**12})
    assert (
        nparray.from_dict({"nparray": "linspace", "start": 0, "stop": 1, "num": 3}).array[-1] == 1
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("command", "kwargs", "reason"),
    [
        ("run_compute", {"detach": True}, "argument 'detach' is not allowed"),
        (
            "run_compute",
            {"use_server": "localthread"},
            "'use_server' cannot be set by this service",
        ),
        ("run_compute", {"server": "localthread"}, "argument 'server' is not allowed"),
        ("run_compute", {"jobid": "../../x"}, "argument 'jobid' is not allowed"),
        ("run_compute", {"script_fname": "x.py"}, "argument 'script_fname' is not allowed"),
        ("run_compute", {"return_changes": True}, "argument 'return_changes' is not allowed"),
        ("run_solver", {"solver": "dc", "detach": True}, "argument 'detach' is not allowed"),
        (
            "run_solver",
            {"solver": "dc", "out_fname": "progress"},
            "argument 'out_fname' is not allowed",
        ),
        (
            "run_solver",
            {"solver": "dc", "custom_lnprobability_callable": "os.system"},
            "argument 'custom_lnprobability_callable' is not allowed",
        ),
        (
            "run_solver",
            {"solver": "dc", "progress_every_niters": 1},
            "'progress_every_niters' cannot be set by this service",
        ),
        (
            "run_solver",
            {"solver": "dc", "use_server": "compute"},
            "'use_server' cannot be set by this service",
        ),
        ("add_dataset", {"kind": "__class__"}, "kind must be one of"),
        ("add_dataset", {"kind": "ParameterSet"}, "kind must be one of"),
        (
            "add_dataset",
            {"kind": "lc", "check_label": False},
            "argument 'check_label' is not allowed",
        ),
        (
            "add_dataset",
            {"kind": "lc", "compute_phases": {"binary": "__import__('os')"}},
            "compute_phases: per-component values are not allowed",
        ),
        (
            "set_value",
            {"twig": "phoebe_version", "value": "9", "ignore_readonly": True},
            "argument 'ignore_readonly' is not allowed",
        ),
        (
            "set_value",
            {"twig": "atm@primary@phoebe01", "value": "x'", "allow_not_in_choices": True},
            "argument 'allow_not_in_choices' is not allowed",
        ),
        (
            "set_value",
            {"twig": "hierarchy@system", "value": "orbit:binary(star:a, star:b)"},
            "HierarchyParameter values cannot be set",
        ),
        (
            "get_value",
            {"twig": "period@binary", "fname": "out.txt"},
            "argument 'fname' is not allowed",
        ),
        (
            "get_parameter",
            {"twig": "period@binary", "filename": "out.txt"},
            "argument 'filename' is not allowed",
        ),
        (
            "attach_parameters",
            {
                "parameters": [
                    {"ptype": "float", "qualifier": "x", "value": 1.0, "context": "component"}
                ]
            },
            "client parameters live in context 'ui' only",
        ),
        (
            "attach_parameters",
            {"parameters": [{"ptype": "choice", "qualifier": "x", "choices": ["a'b"]}]},
            "choices must be printable strings without quotes",
        ),
    ],
)
def test_dangerous_arguments_are_refused(
    command: str,
    kwargs: dict[str, Any],
    reason: str,
    session: PhoebeSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafeInput, match=re.escape(reason)):
        session.dispatch(command, kwargs)
    assert list(tmp_path.iterdir()) == []  # no scripts, progress files or job folders
    assert session.bundle.models == []
    assert_session_healthy(session, tmp_path / "marker")


@pytest.mark.parametrize(
    ("command", "kwargs", "reason"),
    [
        (
            "attach_parameters",
            {"parameters": [{"ptype": "code", "qualifier": "x", "value": ""}]},
            "ptype must be one of",
        ),
        (
            "attach_parameters",
            {
                "parameters": [
                    {
                        "ptype": "float",
                        "qualifier": "x",
                        "value": 1.0,
                        "copy_for": {"uniqueid": "*"},
                    }
                ]
            },
            "copy_for keys must be among ['component', 'dataset', 'kind'], not 'uniqueid'",
        ),
        (
            "get_value",
            {"twig": "period@binary", "check_visible": "yes"},
            "check_visible must be true or false",
        ),
        (
            "get_value",
            {"twig": "period@binary", "qualifier": {"$ne": 1}},
            "qualifier must be a label",
        ),
        ("run_compute", {"model": "../escape"}, "model must be 1-64 letters"),
        (
            "set_value",
            {"twig": "period@binary", "value": {"nparray": "linspace", "num": 10**12}},
            "value: unsupported value of type dict",
        ),
    ],
)
def test_malformed_arguments_are_command_errors(
    command: str, kwargs: dict[str, Any], reason: str, session: PhoebeSession
) -> None:
    with pytest.raises(CommandError, match=re.escape(reason)):
        session.dispatch(command, kwargs)


def test_update_uniqueid_validation(session: PhoebeSession) -> None:
    for bad in ["", "x" * 65, "a b", "a'b", "../x", 5]:
        with pytest.raises(CommandError):
            session.dispatch("update_uniqueid", {"twig": "teff@primary", "uniqueid": bad})
    taken = session.dispatch("get_uniqueid", {"twig": "teff@secondary"})
    with pytest.raises(CommandError, match="already in use"):
        session.dispatch("update_uniqueid", {"twig": "teff@primary", "uniqueid": taken})
    with pytest.raises(CommandError, match="constraints"):
        session.dispatch("update_uniqueid", {"twig": "period@binary", "uniqueid": "new_id-1"})


# ------------------------------------------------------------------------------ load_bundle


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
