"""The store's two exceptions and the rule that tells an outage from a bad request.

:class:`DatabaseUnavailable` is what every :class:`~phoebe_spawner.store.Store`
coroutine raises when the database cannot be used right now; the handlers answer
503 and the session and job managers keep going.  :class:`DatabaseSchemaError`
stops the hub at start-up.  :func:`is_outage` and :func:`as_unavailable` are used
only by the engine thread (:mod:`phoebe_spawner.store.engine`), which turns driver
errors into :class:`DatabaseUnavailable` as they leave the database thread.
"""

from __future__ import annotations

import sqlite3

from sqlalchemy import exc as sa_exc

__all__ = ["DatabaseSchemaError", "DatabaseUnavailable", "as_unavailable", "is_outage"]


class DatabaseSchemaError(Exception):
    """The database schema does not match this code; the message says what to do.

    Raised by :meth:`Store.init` and :func:`~phoebe_spawner.store.upgrade_schema`;
    the hub should exit.
    """


class DatabaseUnavailable(Exception):
    """The database could not be used right now (unreachable, locked, read-only, full).

    Raised by every :class:`Store` coroutine in place of SQLAlchemy's
    ``OperationalError`` & co.  The message never contains the database URL.
    """


_NOT_OUTAGES = (sa_exc.IntegrityError, sa_exc.DataError, sa_exc.ProgrammingError)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means "database not usable now" rather than a bad request/bug."""
    if isinstance(exc, sa_exc.DBAPIError):
        return exc.connection_invalidated or not isinstance(exc, _NOT_OUTAGES)
    return isinstance(exc, sa_exc.TimeoutError | sa_exc.DisconnectionError | sqlite3.Error)


def as_unavailable(exc: BaseException) -> DatabaseUnavailable:
    """A short :class:`DatabaseUnavailable` for ``exc`` (driver message only, no URL/SQL)."""
    orig = getattr(exc, "orig", None) or exc
    text = (str(orig).strip().splitlines() or [type(orig).__name__])[0][:200]
    return DatabaseUnavailable(f"database unavailable: {text}")
