"""Fixtures for the in-process PHOEBE worker tests.

PHOEBE must not try the network (online passbands): the switch is read when PHOEBE is
imported, so it is set here, before any test module imports it.  The session fixture is
module-scoped because importing PHOEBE and building a bundle takes seconds.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

os.environ["PHOEBE_ENABLE_ONLINE_PASSBANDS"] = "FALSE"

if TYPE_CHECKING:
    from phoebe_kernel_worker.commands import PhoebeSession


@pytest.fixture(scope="module")
def phoebe_session(tmp_path_factory: pytest.TempPathFactory) -> PhoebeSession:
    """A real PhoebeSession (default detached binary) shared by one test module."""
    from phoebe_kernel_worker.commands import PhoebeSession

    return PhoebeSession(session_dir=tmp_path_factory.mktemp("session"))
