"""Idle culling: which sessions the hub stops by itself, and how.

The session manager's cull loop calls :func:`cull_idle` every ``cull_interval``; the
policy (``idle_timeout``, ``max_age``, exemptions) is configured on the
:class:`~phoebe_spawner.sessions.SessionManager`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..errors import Unavailable
from .session import LiveSession

if TYPE_CHECKING:
    from .manager import SessionManager


async def cull_idle(manager: SessionManager) -> None:
    """Cull loop: stop sessions idle for ``idle_timeout`` (or older than ``max_age``).

    Idle means no command, no queued or running job (both count in ``in_flight``) and
    no open event stream of the owner (``watchers``: a page is watching). Each cull
    is preceded by ``before_stop`` (a checkpoint); if that fails the session is left
    alone.
    """
    now = time.time()
    for s in list(manager.sessions.values()):
        if s.status == "running":
            await manager.persist_activity(s)
        reason = cull_reason(manager, s, now)
        if reason is None:
            continue
        manager.log.info("culling session %s of %s (%s)", s.id, s.user.name, reason)
        if manager.before_stop is not None:
            try:
                await manager.before_stop(s, "cull")
            except Exception as e:
                manager.log.warning("not culling session %s: checkpoint failed: %s", s.id, e)
                continue
            if cull_reason(manager, s, time.time()) is None:
                continue  # the user came back while the checkpoint was written
        try:
            await manager.stop_session(s, "culled", reason)
        except Unavailable as e:
            manager.log.warning("could not cull session %s: %s", s.id, e)


def cull_reason(manager: SessionManager, s: LiveSession, now: float) -> str | None:
    """Why ``s`` should be culled now, or None."""
    if s.status != "running" or s.in_flight or s.lock.locked():
        return None
    if s.user.name in manager.cull_exempt_users or s.user.user_id in manager.cull_exempt_users:
        return None
    if manager.cull_exempt_groups.intersection(s.user.groups):
        return None
    if manager.max_age and now - s.created_at > manager.max_age:
        return f"older than {manager.max_age:g} s"
    watched = manager.watchers[s.user.user_id] > 0
    if manager.idle_timeout and not watched and now - s.last_activity >= manager.idle_timeout:
        return f"idle for {now - s.last_activity:.0f} s"
    return None
