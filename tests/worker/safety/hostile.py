"""What the safety tests share: code payloads and the check that none of them ran.

Every hostile payload creates a marker file if it is executed; a test asserts the
command was refused, then :func:`assert_session_healthy` checks the marker does not
exist even after PHOEBE re-evaluated its constraints, and that the session still works.
"""

from __future__ import annotations

from pathlib import Path

from phoebe_kernel_worker.commands import PhoebeSession

#: period@binary of the shared session (see conftest.py); refused commands keep it.
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


def assert_session_healthy(session: PhoebeSession, marker: Path) -> None:
    """The marker was not created, even after PHOEBE evaluated every constraint again."""
    session.bundle.run_delayed_constraints()
    for constraint in session.bundle.filter(context="constraint").to_list():
        constraint.get_result()
    assert session.dispatch("get_value", {"twig": "period@binary"}) == SENTINEL_PERIOD
    assert session.dispatch("ping", {}) == {"status": "ready"}
    assert not marker.exists()
