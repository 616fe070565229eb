"""Constraint variables as PHOEBE names them: the letters of their uniqueid.

``ConstraintVar.safe_label`` keeps only the letters of a uniqueid and PHOEBE evaluates
the expression with those names as globals.  Client-chosen uniqueids could make two
variables share a name (one value silently used for both), a name empty, or equal to a
keyword or a function the expression calls; the first-line check models that rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from phoebe_kernel_worker.commands import PhoebeSession
from phoebe_kernel_worker.errors import UnsafeInput
from phoebe_kernel_worker.safety.expressions import check_safe_labels, safe_label, safe_label_form
from phoebe_kernel_worker.safety.patches import check_constraint_before_eval

pytestmark = pytest.mark.phoebe

SMA_CONSTRAINT = "sma@binary@constraint"


def test_safe_label_keeps_letters() -> None:
    assert safe_label("abc-12_DEF") == "abcDEF"
    assert safe_label_form("{a@b} * sin({c})", {"a@b": "xy", "c": "z"}) == "xy * sin(z)"


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"123-4": ""}, "has none"),
        ({"sin1": "sin"}, "would be named 'sin'"),
        ({"lambda-1": "lambda"}, "reserved name"),
        ({"pi2": "pi"}, "reserved name"),
        ({"ab1": "ab", "ab2": "ab"}, "'ab1' and 'ab2' would both be named 'ab'"),
    ],
)
def test_check_safe_labels_refuses(labels: dict[str, str], message: str) -> None:
    with pytest.raises(UnsafeInput) as info:
        check_safe_labels(labels)
    assert message in str(info.value)


def test_check_safe_labels_accepts_phoebe_ids() -> None:
    check_safe_labels({"KRXqRRAnQWjz": "KRXqRRAnQWjz", "abcXYZ": "abcXYZ"})


@pytest.fixture
def session(tmp_path: Path) -> Iterator[PhoebeSession]:
    """A fresh session (these tests change uniqueids)."""
    session = PhoebeSession(tmp_path)
    yield session
    assert session.dispatch("get_value", {"twig": "period@binary"}) == 1.0


def _set_uniqueid(session: PhoebeSession, twig: str, uniqueid: str) -> None:
    assert session.dispatch("update_uniqueid", {"twig": twig, "uniqueid": uniqueid}) == uniqueid


def test_set_value_refuses_colliding_labels(session: PhoebeSession) -> None:
    _set_uniqueid(session, "gravb_bol@primary", "tv-1")
    _set_uniqueid(session, "gravb_bol@secondary", "tv-2")
    expr = "{gravb_bol@primary} / {gravb_bol@secondary} * 1.0"
    with pytest.raises(UnsafeInput) as info:
        session.dispatch("set_value", {"twig": SMA_CONSTRAINT, "value": expr})
    assert "'tv-1' and 'tv-2' would both be named 'tv'" in str(info.value)


def test_set_value_refuses_reserved_label(session: PhoebeSession) -> None:
    _set_uniqueid(session, "gravb_bol@primary", "sin-1")
    with pytest.raises(UnsafeInput) as info:
        session.dispatch(
            "set_value", {"twig": SMA_CONSTRAINT, "value": "{gravb_bol@primary} * 1.0"}
        )
    assert "would be named 'sin'" in str(info.value)


def test_set_value_accepts_distinct_labels(session: PhoebeSession) -> None:
    _set_uniqueid(session, "gravb_bol@primary", "tvA")
    _set_uniqueid(session, "gravb_bol@secondary", "tvB")
    expr = "{gravb_bol@primary} / {gravb_bol@secondary} * 1.0"
    session.dispatch("set_value", {"twig": SMA_CONSTRAINT, "value": expr})
    constraint = session.bundle.get_parameter(SMA_CONSTRAINT, check_visible=False)
    check_constraint_before_eval(constraint)
    assert constraint.get_result().value == pytest.approx(1.0)  # (in solar units)


def test_guard_refuses_collision_planted_past_the_checks(session: PhoebeSession) -> None:
    """A collision that bypassed set_value is refused before PHOEBE evaluates."""
    _set_uniqueid(session, "gravb_bol@primary", "tvA")
    _set_uniqueid(session, "gravb_bol@secondary", "tvB")
    session.dispatch(
        "set_value",
        {"twig": SMA_CONSTRAINT, "value": "{gravb_bol@primary} / {gravb_bol@secondary} * 1.0"},
    )
    constraint = session.bundle.get_parameter(SMA_CONSTRAINT, check_visible=False)
    constraint._vars[1]._safe_label = constraint._vars[0].safe_label
    with pytest.raises(UnsafeInput) as info:
        check_constraint_before_eval(constraint)
    assert "would both be named 'tvA'" in str(info.value)
