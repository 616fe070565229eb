"""Unit strings: one strict grammar before anything reaches astropy's parser.

``"10**1000000000 d"`` used to pin a core inside astropy (a C-level big-integer power
no interrupt reaches).  Every entry point that takes a unit string must refuse it with
a clear message, and the session must keep working; ordinary units keep working.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from astropy.units import UnitsWarning

from phoebe_kernel_worker.commands import PhoebeSession
from phoebe_kernel_worker.errors import UnsafeInput
from phoebe_kernel_worker.safety.units import MAX_UNIT_LENGTH, check_unit_string, is_unit_string

pytestmark = pytest.mark.phoebe

HOSTILE_UNIT = "10**1000000000 d"
PLAIN_UNIT_MESSAGE = "is not a plain unit"

ACCEPTED = [
    "",
    "d",
    "km/s",
    "km / s",
    "solRad",
    "solRad2",
    "W / (m2)",
    "W / (nm m2)",
    "W / m3",
    "erg/s/cm**2/AA",
    "erg / (s cm2 Angstrom)",
    "deg / yr",
    "rad / d",
    "1 / d",
    "s-1",
    "m^-2",
    "cm**(-2)",
    "m**10",
    "dimensionless",
]

REFUSED = [
    (HOSTILE_UNIT, PLAIN_UNIT_MESSAGE),
    ("10**-3 m", PLAIN_UNIT_MESSAGE),
    ("1e300 m", PLAIN_UNIT_MESSAGE),
    ("2 m", PLAIN_UNIT_MESSAGE),
    ("m**11", "powers are limited"),
    ("m12", "power of 'm12' is above 10"),
    ("m**2**2", "no powers of powers"),
    ("m**100000", PLAIN_UNIT_MESSAGE),
    ("((((m))))", "nested too deeply"),
    ("(m", "incomplete unit expression"),
    ("m)", "unbalanced parentheses"),
    ("/ s", "operator '/' without a unit"),
    ("m." + "x", PLAIN_UNIT_MESSAGE),
    ("m" * (MAX_UNIT_LENGTH + 1), "at most 64 characters"),
    ("__import__('os')", PLAIN_UNIT_MESSAGE),
]


@pytest.mark.parametrize("unit", ACCEPTED)
def test_grammar_accepts_plain_units(unit: str) -> None:
    assert check_unit_string(unit) == unit
    assert is_unit_string(unit)


@pytest.mark.parametrize(("unit", "message"), REFUSED)
def test_grammar_refuses(unit: str, message: str) -> None:
    with pytest.raises(UnsafeInput) as info:
        check_unit_string(unit)
    assert message in str(info.value)
    assert not is_unit_string(unit)


def test_grammar_refuses_non_strings() -> None:
    with pytest.raises(UnsafeInput) as info:
        check_unit_string(5)
    assert "must be a unit string" in str(info.value)


def test_every_unit_phoebe_writes_fits_the_grammar(phoebe_session: PhoebeSession) -> None:
    """Units of a bundle with every dataset kind (PHOEBE's own strings) all pass."""
    bundle = phoebe_session.bundle.copy()
    for kind in ("lc", "rv", "orb", "mesh"):
        bundle.add_dataset(kind, compute_times=[0.0, 1.0])
    bundle.add_dataset("lp", compute_times=[0.0], wavelengths=[500.0, 501.0])
    units = {p["default_unit"] for p in bundle.to_json() if p.get("default_unit") is not None}
    assert {"d", "solRad", "W / m2", "km / s"} <= units
    assert [u for u in units if not is_unit_string(u)] == []


@pytest.fixture
def session(phoebe_session: PhoebeSession) -> Iterator[PhoebeSession]:
    """The module's session, checked usable after each test."""
    yield phoebe_session
    assert phoebe_session.dispatch("get_value", {"twig": "period@binary", "unit": "d"}) == 1.0


def _refused(session: PhoebeSession, command: str, kwargs: dict[str, Any]) -> str:
    with pytest.raises(UnsafeInput) as info:
        session.dispatch(command, kwargs)
    return str(info.value)


def test_get_value_refuses_hostile_unit(session: PhoebeSession) -> None:
    message = _refused(session, "get_value", {"twig": "period@binary", "unit": HOSTILE_UNIT})
    assert message.startswith(f"unit {HOSTILE_UNIT!r} {PLAIN_UNIT_MESSAGE}")


def test_set_value_refuses_hostile_unit(session: PhoebeSession) -> None:
    kwargs = {"twig": "period@binary", "value": 2.0, "unit": HOSTILE_UNIT}
    assert PLAIN_UNIT_MESSAGE in _refused(session, "set_value", kwargs)
    assert session.bundle.get_value("period@binary") == 1.0


def test_attach_parameters_refuses_hostile_default_unit(session: PhoebeSession) -> None:
    spec = {"ptype": "float", "qualifier": "u_hostile", "value": 1.0, "default_unit": HOSTILE_UNIT}
    message = _refused(session, "attach_parameters", {"parameters": [spec]})
    assert message.startswith("attach_parameters: parameter #0: default_unit")
    assert PLAIN_UNIT_MESSAGE in message
    assert "u_hostile" not in session.bundle.filter(context="ui", check_visible=False).qualifiers


def test_legitimate_units_work(session: PhoebeSession) -> None:
    assert session.dispatch("get_value", {"twig": "period@binary", "unit": "s"}) == 86400.0
    assert session.dispatch("get_value", {"twig": "vgamma@system", "unit": "km/s"}) == 0.0
    sma = session.dispatch("get_value", {"twig": "sma@binary@component", "unit": "solRad"})
    assert sma == pytest.approx(5.3, rel=0.01)
    spec = {"ptype": "float", "qualifier": "flux_density", "value": 1.0}
    spec["default_unit"] = "erg/s/cm**2/AA"
    with pytest.warns(UnitsWarning, match="multiple slashes"):  # astropy's advice only
        session.dispatch("attach_parameters", {"parameters": [spec]})
    value = session.dispatch("get_value", {"twig": "flux_density@ui", "unit": "W / (m2 nm)"})
    assert value == pytest.approx(0.01)


def test_astropy_parser_guard_is_the_last_line(session: PhoebeSession) -> None:
    """Whatever path a unit string takes inside PHOEBE, astropy's parser checks it."""
    from astropy import units

    with pytest.raises(UnsafeInput) as info:
        units.Unit(HOSTILE_UNIT)
    assert PLAIN_UNIT_MESSAGE in str(info.value)
    assert units.Unit("W / (m2)") == units.W / units.m**2


def _bundle_with(session: PhoebeSession, edit: Any) -> str:
    params = json.loads(session.dispatch("get_bundle")["bundle"])
    edit(params)
    return json.dumps(params)


def _find(params: list[dict[str, Any]], **tags: str) -> dict[str, Any]:
    matches = [p for p in params if all(p.get(k) == v for k, v in tags.items())]
    assert len(matches) == 1, tags
    return matches[0]


def test_load_bundle_refuses_hostile_default_unit(session: PhoebeSession) -> None:
    def edit(params: list[dict[str, Any]]) -> None:
        _find(params, qualifier="period", component="binary", context="component")[
            "default_unit"
        ] = HOSTILE_UNIT

    message = _refused(session, "load_bundle", {"bundle": _bundle_with(session, edit)})
    assert "default_unit" in message and PLAIN_UNIT_MESSAGE in message


def test_load_bundle_refuses_hostile_distribution_unit(session: PhoebeSession) -> None:
    import phoebe

    bundle = session.bundle
    bundle.add_distribution("teff@primary", phoebe.gaussian_around(100), distribution="dunit")
    try:

        def edit(params: list[dict[str, Any]]) -> None:
            dist = _find(params, qualifier="teff", context="distribution")
            dist["value"]["unit"] = HOSTILE_UNIT

        text = _bundle_with(session, edit)
    finally:
        bundle.remove_distribution("dunit")
    message = _refused(session, "load_bundle", {"bundle": text})
    assert "distribution unit" in message and PLAIN_UNIT_MESSAGE in message


def test_load_bundle_accepts_phoebe_units(session: PhoebeSession) -> None:
    text = _bundle_with(session, lambda params: None)
    assert session.dispatch("load_bundle", {"bundle": text}) == {}


def test_set_value_on_unit_parameter_checks_the_unit(session: PhoebeSession) -> None:
    """A UnitParameter's value is a unit string (a figure's axis unit)."""
    if "lc_units" not in session.bundle.datasets:
        session.dispatch("add_dataset", {"kind": "lc", "dataset": "lc_units"})
    [figure] = session.bundle.filter(context="figure", check_visible=False).figures
    twig = f"yunit@{figure}"
    hidden = {"twig": twig, "check_visible": False}  # shown once yunit_source is 'manual'
    message = _refused(session, "set_value", {**hidden, "value": HOSTILE_UNIT})
    assert message.startswith("set_value: value ") and PLAIN_UNIT_MESSAGE in message
    session.dispatch("set_value", {**hidden, "value": "W / (m2)"})
    assert str(session.dispatch("get_value", hidden)) == "W / m2"
