"""Fixtures for the safety tests: the module's PHOEBE session, kept pristine.

Refused commands must leave the session unchanged, so most tests share one session
(``session``); a test that changes the bundle takes ``fresh_session``, which is reset
afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from phoebe_kernel_worker.commands import PhoebeSession

from .hostile import SENTINEL_PERIOD


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
