"""Command arguments (safety.arguments, edits, runs, ui_parameters) refused through PHOEBE.

Dangerous arguments (processes, files, code, readonly and choice bypasses) are
UnsafeInput and leave no file behind; malformed ones are CommandError.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from phoebe_kernel_worker.commands import PhoebeSession
from phoebe_kernel_worker.errors import CommandError, UnsafeInput

from .hostile import assert_session_healthy

pytestmark = pytest.mark.phoebe


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
