"""Errors the hub's services raise for requests they refuse.

Each carries the HTTP status the handlers answer with and a client-facing detail
(``str()``); the handlers' base class turns them into ``{"detail": ...}`` responses
(plus :meth:`SessionError.fields`).
Raised by the session manager, the job manager and the passbands cache.
"""

from __future__ import annotations

import asyncio
from typing import Any


class SessionError(Exception):
    """A request the manager refuses; ``status`` is the HTTP status, ``str()`` the detail."""

    status = 400

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        if status is not None:
            self.status = status

    def fields(self) -> dict[str, Any]:
        """What the error's JSON answer carries besides ``detail`` (nothing by default)."""
        return {}


class SessionNotFound(SessionError):
    status = 404


class SessionGone(SessionError):
    """410: a session the hub (or an admin) ended, asked for within its linger time.

    ``reason`` is why it ended, ``checkpoint_id`` the checkpoint the hub saved at its
    end (None if none was). Raised by :meth:`Session.check_running
    <phoebe_spawner.sessions.session.Session.check_running>` and the session manager's
    look-up of ended sessions (:mod:`phoebe_spawner.sessions.endings`).
    """

    status = 410

    def __init__(self, detail: str, reason: str | None, checkpoint_id: str | None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.checkpoint_id = checkpoint_id

    def fields(self) -> dict[str, Any]:
        return {"reason": self.reason, "checkpoint_id": self.checkpoint_id}


class NotOwner(SessionError):
    status = 403


class RateLimited(SessionError):
    """Too many requests of one kind; ``retry_after`` says when to try again (seconds)."""

    status = 429

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class LimitReached(SessionError):
    status = 429


class Unavailable(SessionError):
    """Worker dead or failed to start, or the database is unavailable; ``retry_after``
    (seconds) when trying again soon may well succeed (the handlers send it as
    ``Retry-After``)."""

    status = 503

    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class CommandTimedOut(SessionError):
    """A command exceeded its timeout and was interrupted; ``recovery`` (when set) is the
    task that waits ``interrupt_grace`` for the worker and stops it if it is hung."""

    status = 504
    recovery: asyncio.Task[None] | None = None
