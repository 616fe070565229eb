"""The cull pass: stopping idle (or too old) sessions without losing their models.

Called by :meth:`SessionManager.cull_idle <.manager.SessionManager.cull_idle>` every
``cull_interval`` (and by tests, with moved-back clocks). Which session is culled, and
why, is :class:`~.policy.CullPolicy`'s pure rule; this module carries it out: each
culled session gets ``before_stop`` first (the checkpoint manager's: its model is
saved), and is left alone if that fails or its user came back while it was written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from ..errors import Unavailable
from .session import Session

#: why a session is to be culled at a time (None: it is not)
CullReason = Callable[[Session, float], str | None]
BeforeStop = Callable[[Session, str], Awaitable[object]]


async def cull_pass(
    sessions: Iterable[Session],
    reason_of: CullReason,
    before_stop: BeforeStop | None,
    log: logging.Logger,
) -> None:
    """Stop every session ``reason_of`` names, each after ``before_stop(session, "cull")``;
    the last activity of running sessions is persisted on the way (best effort)."""
    now = time.time()
    for s in list(sessions):
        if s.status == "running":
            await s.persist_activity()
        reason = reason_of(s, now)
        if reason is None:
            continue
        log.debug("culling session %s of %s (%s)", s.id, s.user.name, reason)
        if before_stop is not None:
            try:
                await before_stop(s, "cull")
            except Exception as e:
                log.warning("not culling session %s: checkpoint failed: %s", s.id, e)
                continue
            if reason_of(s, time.time()) is None:
                continue  # the user came back while the checkpoint was written
        try:
            await s.stop("culled", reason)
        except Unavailable as e:
            log.warning("could not cull session %s: %s", s.id, e)
