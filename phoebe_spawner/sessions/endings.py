"""Session endings: how long an ended session stays known, and what asking for it answers.

Built once by the :class:`~phoebe_spawner.sessions.manager.SessionManager`, which
hands it every :class:`~.bus.SessionChanged` event and asks it about session ids its
registry does not hold. A session its owner ended is forgotten at once (404, as the old
server answered); one the hub ended (culled, failed, past ``max_age``, over its disk
quota, at shutdown) or an admin ended stays in the registry for its linger time, and a
command to it answers 410 (:meth:`Session.gone <.session.Session.gone>`). After that,
or after a hub restart, :meth:`Endings.missing` reads the stored row (its status and
termination reason, and the checkpoint saved at its end) and answers the same 410 within
the linger time; the look-ups are cached in a bounded map and time-limited, so unknown
ids cannot make every request wait for the database. Each ending is logged once here:
who ended which session of whom, and why.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..auth.base import User
from ..errors import SessionError, SessionNotFound
from ..store import DatabaseUnavailable, Store
from .bus import SessionChanged
from .session import ENDED, OWNER_REASON, Session, gone_error

#: the checkpoint hook run before the hub stops a session (``SessionManager.before_stop``)
BeforeStop = Callable[[Session, str], Awaitable[Any]]
#: checkpoint reasons of the checkpoints the hub saves before it ends a session
HUB_CHECKPOINTS = ("cull", "shutdown", "stop")


@dataclass(frozen=True)
class StoredEnding:
    """What the store knows of a session the hub or an admin ended."""

    user_id: str
    status: str
    reason: str | None
    ended_at: float
    checkpoint_id: str | None


class Endings:
    """Linger times, the log line of every ending, and the store look-up of ended
    sessions; see the module docstring. Owned by the session manager."""

    def __init__(
        self,
        store: Store,
        log: logging.Logger | logging.LoggerAdapter[Any],
        *,
        failed_linger: float,
        ended_linger: float | None,
        cache_size: int = 4096,
        lookup_timeout: float = 2.0,
    ) -> None:
        self._store = store
        self._log = log
        self.failed_linger = failed_linger
        self.ended_linger = failed_linger if ended_linger is None else ended_linger
        self._cache: OrderedDict[str, StoredEnding | None] = OrderedDict()
        self._cache_size = cache_size
        self._lookup_timeout = lookup_timeout

    def linger(self, status: str) -> float:
        """Seconds a session that ended ``status`` (by the hub or an admin) stays known."""
        return self.failed_linger if status == "failed" else self.ended_linger

    def expired(self, s: Session, now: float) -> bool:
        """Whether an ended session has lingered long enough to be dropped."""
        return s.ended_at is not None and now - s.ended_at > self.linger(s.status)

    def drop(self, session_id: str, registry: dict[str, Session]) -> None:
        """Drop an ended session from ``registry`` (its owner ended or dismissed it, or its
        linger time is over): from now on it is not found (404), without asking the store."""
        registry.pop(session_id, None)
        self._remember(session_id, None)

    # --- events ---------------------------------------------------------------------------

    def on_change(self, change: SessionChanged[Session], registry: dict[str, Session]) -> None:
        """Log a session's end once, and drop it from ``registry`` unless it lingers."""
        s = change.session
        if change.event not in ENDED:
            return
        checkpoint = f" (checkpoint {s.checkpoint_id})" if s.checkpoint_id else ""
        level = logging.WARNING if change.event == "failed" else logging.INFO
        self._log.log(
            level,
            "session %s of %s ended (%s) by %s: %s%s",
            s.id,
            s.user.name,
            change.event,
            s.ended_by,
            s.reason,
            checkpoint,
        )
        if not s.linger:
            self.drop(s.id, registry)

    # --- the hub's own stops ------------------------------------------------------------

    async def stop_all(self, live: list[Session], before_stop: BeforeStop | None) -> None:
        """Hub shutdown: checkpoint every live session (``before_stop``; a failure is
        logged, the stop goes ahead) and stop them all, reason ``hub shutdown``."""
        if before_stop is not None:
            results = await asyncio.gather(
                *(before_stop(s, "shutdown") for s in live), return_exceptions=True
            )
            for s, result in zip(live, results, strict=True):
                if isinstance(result, BaseException):
                    self._log.error("no checkpoint of session %s at shutdown: %s", s.id, result)
        await asyncio.gather(
            *(s.stop("stopped", "hub shutdown") for s in live), return_exceptions=True
        )

    async def fail_checkpointed(
        self, s: Session, reason: str, before_stop: BeforeStop | None
    ) -> None:
        """A session over its disk quota: checkpointed if it can be, then failed with
        ``reason`` (it lingers with its reason and checkpoint, like other failures)."""
        self._log.debug("session %s of %s: %s; stopping it", s.id, s.user.name, reason)
        if before_stop is not None:
            try:
                await before_stop(s, "stop")
            except Exception as e:
                self._log.warning("no checkpoint of session %s before its stop: %s", s.id, e)
        await s.fail(reason)

    # --- ids the registry does not hold ---------------------------------------------------

    async def missing(self, user: User, session_id: str) -> SessionError:
        """The error for ``session_id`` of ``user`` that the registry does not hold: 410
        if the store says the hub or an admin ended it within its linger time, else 404."""
        not_found = SessionNotFound(f"Session {session_id} not found")
        ending = await self._stored_ending(session_id)
        if ending is None or ending.user_id != user.user_id:
            return not_found
        if time.time() - ending.ended_at > self.linger(ending.status):
            return not_found
        return gone_error(session_id, ending.status, ending.reason, ending.checkpoint_id)

    async def _stored_ending(self, session_id: str) -> StoredEnding | None:
        if not _is_uuid(session_id):
            return None  # no session has such an id: no database read
        if session_id in self._cache:
            self._cache.move_to_end(session_id)
            return self._cache[session_id]
        try:
            ending = await asyncio.wait_for(self._read(session_id), self._lookup_timeout)
        except (DatabaseUnavailable, TimeoutError) as e:
            self._log.debug("no stored ending of session %s: %s", session_id, e)
            return None  # not cached: the next request asks again
        self._remember(session_id, ending)
        return ending

    def _remember(self, session_id: str, ending: StoredEnding | None) -> None:
        self._cache[session_id] = ending
        self._cache.move_to_end(session_id)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _read(self, session_id: str) -> StoredEnding | None:
        row = await self._store.get_session(session_id)
        if row is None or row["status"] not in ENDED or not row.get("stopped_at"):
            return None
        reason = row.get("termination_reason")
        if row["status"] == "stopped" and reason == OWNER_REASON:
            return None  # its owner ended it: 404
        checkpoints, _ = await self._store.list_checkpoints(
            user_id=row["user_id"], session_id=session_id, limit=10, offset=0
        )
        ends = [c["id"] for c in checkpoints if c["reason"] in HUB_CHECKPOINTS]
        return StoredEnding(
            user_id=row["user_id"],
            status=row["status"],
            reason=reason,
            ended_at=float(row["stopped_at"]),
            checkpoint_id=ends[0] if ends else None,
        )


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
