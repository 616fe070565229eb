"""Session factories the worker entry point can build (``--session-factory``).

The default builds a real PHOEBE session; importing PHOEBE happens here, inside the
call, so the worker's own modules stay importable without it.

A factory may carry a ``prepare`` attribute: a callable the fork server
(:mod:`phoebe_kernel_worker.forkserver`) runs once in its template process before it
forks any worker, to do the expensive, session-independent work (import PHOEBE, build
the default bundle) that every forked child then shares copy-on-write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .protocol import ConnectionInfo
from .worker import CommandSession

#: the default bundle built by :func:`prepare_phoebe` in the fork server's template; a
#: forked child takes it over as its own (its memory is private to that child after fork)
_template_bundle: list[Any] = []


def prepare_phoebe() -> None:
    """Import and configure PHOEBE and build the default bundle (fork-server template only).

    A forked child uses that bundle as is: after ``fork`` the object lives in the child's
    own (copy-on-write) memory, so this costs nothing per session, where a deep copy
    costs ~15 ms and building a new one ~0.5 s (see docs/performance.md).
    """
    from .commands import build_bundle, configure_phoebe_process

    configure_phoebe_process()
    _template_bundle[:] = [build_bundle("detached")]


def phoebe_session(info: ConnectionInfo) -> CommandSession:
    """A PHOEBE session starting from the default detached binary, with the cost caps
    of the connection file's ``limits`` (see :mod:`phoebe_kernel_worker.safety.costs`)."""
    from .commands import PhoebeSession
    from .protocol.limits import WorkerLimits

    limits = WorkerLimits.from_mapping(info.limits)
    bundle = _template_bundle.pop() if _template_bundle else None
    return PhoebeSession(session_dir=Path(info.session_dir), bundle=bundle, limits=limits)


phoebe_session.prepare = prepare_phoebe  # type: ignore[attr-defined]
