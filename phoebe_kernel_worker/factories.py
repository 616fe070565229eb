"""Session factories the worker entry point can build (``--session-factory``).

The default builds a real PHOEBE session; importing PHOEBE happens here, inside the
call, so the worker's own modules stay importable without it.
"""

from __future__ import annotations

from pathlib import Path

from .protocol import ConnectionInfo
from .worker import CommandSession


def phoebe_session(info: ConnectionInfo) -> CommandSession:
    """A PHOEBE session starting from the default detached binary."""
    from .commands import PhoebeSession

    return PhoebeSession(session_dir=Path(info.session_dir))
