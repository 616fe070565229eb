"""The per-session command log (the ``session_commands`` table): :class:`CommandLog`.

After each worker command the hub's command path calls ``Store.log_command``,
which lands in :meth:`CommandLog.log`: the row is only buffered (a
:class:`~phoebe_spawner.store.batch.BatchBuffer`) and written in batches by the
buffer's flusher, so no request waits on a database write.  Each batch also bumps
``sessions.command_count``.  ``Store.list_commands`` reads the log back.  The
:class:`~phoebe_spawner.store.Store` starts and shuts down :attr:`CommandLog.buffer`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import sqlalchemy as sa

from . import orm
from .batch import BatchBuffer
from .engine import DatabaseThread

__all__ = ["CommandLog"]

_SESSIONS = orm.Base.metadata.tables["sessions"]
_COMMANDS = orm.Base.metadata.tables["session_commands"]


class CommandLog:
    """Buffer command rows, write them in batches on ``db``'s thread, read them back.

    ``interval``/``batch_max`` are the flusher settings of :attr:`buffer`
    (``Store(command_flush_interval=..., command_batch_max=...)``).
    """

    def __init__(self, db: DatabaseThread, *, interval: float, batch_max: int) -> None:
        self._db = db
        #: The rows not yet written and the flusher task that writes them.
        self.buffer = BatchBuffer(
            self._write,
            name="command log",
            interval=interval,
            batch_max=batch_max,
            skip_reason="unknown session",
        )

    def log(
        self,
        *,
        session_id: str,
        user_id: str,
        command: str,
        started_at: float,
        duration_ms: float,
        success: bool,
        error: str | None,
    ) -> None:
        """Buffer one command-log row; never blocks and never raises for DB trouble.

        Called (through ``Store.log_command``) by the command proxy after each worker
        command, from the event loop's thread.  The flusher writes the buffer every
        ``interval`` s, or at once when it holds ``batch_max`` rows, and bumps
        ``sessions.command_count``.  During an outage at most ``10 * batch_max`` rows
        are kept (oldest dropped, counted in ``buffer.dropped``).
        ``command``/``error`` are cut to 64/1000 chars.
        """
        self.buffer.add(
            {
                "session_id": session_id,
                "user_id": user_id,
                "command": command[:64],
                "started_at": started_at,
                "duration_ms": duration_ms,
                "success": bool(success),
                "error": orm.truncate(error, 1000),
            }
        )

    async def newest(self, session_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` written command rows of a session, oldest first."""
        c = orm.SessionCommand
        query = sa.select(c).where(c.session_id == session_id).order_by(c.id.desc()).limit(limit)
        return await self._db.rows(query, reverse=True)

    def _write(self, batch: list[dict[str, Any]]) -> asyncio.Future[int]:
        """Schedule one batch insert on the DB thread (the buffer's ``write`` callable)."""
        return self._db.submit(self._write_sync, batch)

    def _write_sync(self, batch: list[dict[str, Any]]) -> int:
        """Insert ``batch`` and bump ``sessions.command_count`` in one transaction.

        Rows of unknown sessions are skipped; their number is returned.
        """
        st, ct = _SESSIONS, _COMMANDS
        with self._db.transaction() as s:
            conn = s.connection()
            sids = {r["session_id"] for r in batch}
            known = set(conn.execute(sa.select(st.c.id).where(st.c.id.in_(sids))).scalars())
            good = [r for r in batch if r["session_id"] in known]
            if good:
                conn.execute(sa.insert(ct), good)
                bump = (
                    sa.update(st)
                    .where(st.c.id == sa.bindparam("b_id"))
                    .values(command_count=st.c.command_count + sa.bindparam("b_n"))
                )
                counts = Counter(r["session_id"] for r in good)
                conn.execute(bump, [{"b_id": k, "b_n": n} for k, n in counts.items()])
        return len(batch) - len(good)
