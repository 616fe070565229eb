"""Resource samples of sessions (the ``session_metrics`` table): :class:`MetricQueries`.

The :class:`~phoebe_spawner.store.Store` owns one :class:`MetricQueries` and
exposes it as ``record_metric`` (one sample), ``record_metrics`` (a round of the hub's
memory loop, one transaction) and ``get_metrics`` (the dashboard's graphs).  Only the
newest ``keep`` samples of a session are kept: each insert deletes what falls off the end.
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
_SESSIONS = orm.Base.metadata.tables["sessions"]


class MetricQueries:
    """Record and read a session's samples, keeping the newest ``keep`` per session."""

    def __init__(self, db: DatabaseThread, *, keep: int) -> None:
        self._db = db
        #: Samples kept per session (``Store(metrics_keep=...)``).
        self.keep = keep

    def _cutoff(self, session_id: str) -> Any:
        """The id of the newest sample of ``session_id`` that falls off the end."""
        t = _METRICS
        return (
            sa.select(t.c.id)
            .where(t.c.session_id == session_id)
            .order_by(t.c.id.desc())
            .limit(1)
            .offset(self.keep)
            .scalar_subquery()
        )

    async def record(
        self, session_id: str, ts: float, mem_used: float, cpu_percent: float | None = None
    ) -> None:
        """Store one resource sample (activity monitor); keeps the newest :attr:`keep`.

        Raises ``KeyError`` for an unknown session.
        """
        t = _METRICS
        cutoff = self._cutoff(session_id)
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

    async def record_many(self, rows: list[tuple[str, float, float]]) -> int:
        """Store ``(session_id, ts, mem_used)`` samples in one transaction (a round of the
        memory loop), keeping the newest :attr:`keep` per session. Rows of sessions the
        store does not know are skipped; returns how many were."""
        t = _METRICS
        ids = sorted({sid for sid, _, _ in rows})

        def work(s: OrmSession) -> int:
            with s.begin():
                conn = s.connection()
                known = set(
                    conn.execute(sa.select(_SESSIONS.c.id).where(_SESSIONS.c.id.in_(ids))).scalars()
                )
                values = [
                    {"session_id": sid, "ts": ts, "mem_used": mem, "cpu_percent": None}
                    for sid, ts, mem in rows
                    if sid in known
                ]
                if values:
                    conn.execute(sa.insert(t), values)
                for sid in sorted(known):
                    conn.execute(
                        sa.delete(t).where(t.c.session_id == sid, t.c.id <= self._cutoff(sid))
                    )
            return len(rows) - len(values)

        return await self._db.run(work)

    async def newest(self, session_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` samples of a session, oldest first (dashboard graphs)."""
        m = orm.SessionMetric
        query = sa.select(m).where(m.session_id == session_id).order_by(m.id.desc()).limit(limit)
        return await self._db.rows(query, reverse=True)
