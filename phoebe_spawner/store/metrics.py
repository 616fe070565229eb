"""Resource samples of sessions (the ``session_metrics`` table): :class:`MetricQueries`.

The :class:`~phoebe_spawner.store.Store` owns one :class:`MetricQueries` and
exposes it as ``record_metric`` (called by the hub's memory/CPU sampling loop) and
``get_metrics`` (the dashboard's graphs).  Only the newest ``keep`` samples of a
session are kept: each insert deletes the one that falls off the end.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session as OrmSession

from . import orm
from .engine import DatabaseThread

__all__ = ["MetricQueries"]

_METRICS = orm.Base.metadata.tables["session_metrics"]


class MetricQueries:
    """Record and read a session's samples, keeping the newest ``keep`` per session."""

    def __init__(self, db: DatabaseThread, *, keep: int) -> None:
        self._db = db
        #: Samples kept per session (``Store(metrics_keep=...)``).
        self.keep = keep

    async def record(
        self, session_id: str, ts: float, mem_used: float, cpu_percent: float | None = None
    ) -> None:
        """Store one resource sample (activity monitor); keeps the newest :attr:`keep`.

        Raises ``KeyError`` for an unknown session.
        """
        t = _METRICS
        cutoff = (
            sa.select(t.c.id)
            .where(t.c.session_id == session_id)
            .order_by(t.c.id.desc())
            .limit(1)
            .offset(self.keep)
            .scalar_subquery()
        )
        row = {"session_id": session_id, "ts": ts, "mem_used": mem_used, "cpu_percent": cpu_percent}

        def work(s: OrmSession) -> None:
            with s.begin():
                conn = s.connection()
                conn.execute(sa.insert(t), row)
                # One index range scan of `keep` entries; deletes 0-1 rows normally.
                conn.execute(sa.delete(t).where(t.c.session_id == session_id, t.c.id <= cutoff))

        try:
            await self._db.run(work)
        except sa_exc.IntegrityError as exc:
            raise KeyError(session_id) from exc

    async def newest(self, session_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` samples of a session, oldest first (dashboard graphs)."""
        m = orm.SessionMetric
        query = sa.select(m).where(m.session_id == session_id).order_by(m.id.desc()).limit(limit)
        return await self._db.rows(query, reverse=True)
