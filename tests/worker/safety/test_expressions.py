"""Constraint expressions (safety.expressions): nothing PHOEBE evaluates may run code.

The allow-list alone (pure), then through PHOEBE: every expression PHOEBE writes
passes, and ``set_value`` refuses every payload and every unsafe constraint variable.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from phoebe_kernel_worker.commands import PhoebeSession, build_bundle
from phoebe_kernel_worker.errors import UnsafeInput
from phoebe_kernel_worker.safety.expressions import (
    ALLOWED_FUNCTIONS,
    analyze_expression,
    validate_expression,
)
from phoebe_kernel_worker.safety.patterns import is_quote_safe

from .hostile import CODE_PAYLOADS, assert_session_healthy

pytestmark = pytest.mark.phoebe

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
