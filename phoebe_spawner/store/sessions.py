"""Queries on session rows (the ``sessions`` table): :class:`SessionQueries`.

The :class:`~phoebe_spawner.store.Store` owns one :class:`SessionQueries` and
exposes it as ``create_session``, ``update_session``, ``get_session`` and
``list_sessions``; the session manager and the handlers call the store, never this
module.  Rows come back as plain dicts of the
:class:`~phoebe_spawner.store.orm.Session` columns (``meta`` for ``metadata``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session as OrmSession

from . import orm
from .engine import DatabaseThread

__all__ = ["SessionQueries"]

_SESSION_KEYS = frozenset(a.key for a in sa.inspect(orm.Session).column_attrs)
_NO_TRUNCATE = frozenset({"id", "user_id", "status", "spawner_class"})


def _session_values(fields: dict[str, Any]) -> dict[str, Any]:
    """Check session field names, truncate over-long text, map ``None`` JSON to ``{}``."""
    unknown = set(fields) - _SESSION_KEYS
    if unknown:
        raise TypeError(f"unknown session field(s): {', '.join(sorted(unknown))}")
    out = dict(fields)
    for key, value in fields.items():
        col = orm.Session.__mapper__.column_attrs[key].columns[0]
        if key in ("spawner_state", "meta") and value is None:
            out[key] = {}
        elif isinstance(value, str) and key not in _NO_TRUNCATE:
            length = getattr(col.type, "length", None)
            if length and len(value) > length:
                out[key] = value[:length]
    return out


class SessionQueries:
    """Insert, update, read and list session rows; every query runs on ``db``'s thread."""

    def __init__(self, db: DatabaseThread) -> None:
        self._db = db

    async def create(self, **fields: Any) -> None:
        """Insert a session row (spawn handler); ``fields`` are :class:`orm.Session` attrs.

        ``id`` and ``user_id`` are required; ``created_at`` defaults to now and
        ``last_activity`` to ``created_at``.  Over-long text (user agent, ...) is
        truncated.  Raises ``ValueError`` for a duplicate id.
        """
        values = _session_values(fields)
        values.setdefault("created_at", time.time())
        values.setdefault("last_activity", values["created_at"])
        row = orm.Session(**values)

        def work(s: OrmSession) -> None:
            with s.begin():
                s.add(row)

        try:
            await self._db.run(work)
        except sa_exc.IntegrityError as exc:
            raise ValueError(f"cannot create session {fields.get('id')!r}: {exc.orig}") from exc

    async def update(self, session_id: str, **fields: Any) -> None:
        """Set columns of session ``session_id`` (status changes, activity, state).

        Raises ``KeyError`` if there is no such session, ``TypeError`` for unknown
        field names.
        """
        values = _session_values(fields)
        if "id" in values:
            raise TypeError("a session's id cannot be changed")

        def work(s: OrmSession) -> None:
            with s.begin():
                if values:
                    stmt = (
                        sa.update(orm.Session)
                        .where(orm.Session.id == session_id)
                        .values({getattr(orm.Session, k): v for k, v in values.items()})
                        .execution_options(synchronize_session=False)
                    )
                    found = s.execute(stmt).rowcount > 0  # type: ignore[attr-defined]
                else:
                    found = s.get(orm.Session, session_id) is not None
            if not found:
                raise KeyError(session_id)

        await self._db.run(work)

    async def get(self, session_id: str) -> dict[str, Any] | None:
        """The session ``session_id`` as a dict, or ``None``."""
        return await self._db.get(orm.Session, orm.Session.id == session_id)

    async def find(
        self,
        *,
        user_id: str | None = None,
        statuses: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Sessions, newest (``created_at``) first, optionally by user and status."""
        query = sa.select(orm.Session).order_by(
            orm.Session.created_at.desc(), orm.Session.id.desc()
        )
        if user_id is not None:
            query = query.where(orm.Session.user_id == user_id)
        if statuses is not None:
            query = query.where(orm.Session.status.in_(list(statuses)))
        if limit is not None:
            query = query.limit(limit)
        return await self._db.rows(query)
