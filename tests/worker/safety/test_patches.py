"""Run-time patches (safety.patches): what got past the command checks still cannot run.

Values planted behind the checks' back, code and job parameters, exported scripts,
distl functions and oversized nparray generators all hit a patched PHOEBE entry point.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phoebe_kernel_worker.commands import PhoebeSession
from phoebe_kernel_worker.errors import UnsafeInput

from .hostile import assert_session_healthy

pytestmark = pytest.mark.phoebe


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
