"""The event history of async jobs (the ``job_events`` table): :class:`JobEventLog`.

The hub's job manager logs every event of a job (progress, log line, terminal
event) through ``Store.log_job_event``, which lands in :meth:`JobEventLog.log`:
events are only buffered (a :class:`~phoebe_spawner.store.batch.BatchBuffer`) and
written in batches by the buffer's flusher, which also raises
``jobs.last_event_id``.  ``Store.flush_job_events`` writes them at once (before a
terminal job update, see :mod:`phoebe_spawner.store.jobs`) and
``Store.get_job_events`` replays them to a client that reconnects.  The
:class:`~phoebe_spawner.store.Store` starts and shuts down :attr:`JobEventLog.buffer`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa

from . import orm
from .batch import BatchBuffer
from .engine import DatabaseThread

__all__ = ["JobEventLog"]

_JOBS = orm.Base.metadata.tables["jobs"]
_EVENTS = orm.Base.metadata.tables["job_events"]
_EVENT_COLUMNS = (_EVENTS.c.seq, _EVENTS.c.ts, _EVENTS.c.type, _EVENTS.c.data)


class JobEventLog:
    """Buffer job events, write them in batches on ``db``'s thread, read them back.

    ``interval``/``batch_max`` are the flusher settings of :attr:`buffer` (the
    store passes its command-log settings: ``command_flush_interval`` and
    ``command_batch_max`` apply to both logs).
    """

    def __init__(self, db: DatabaseThread, *, interval: float, batch_max: int) -> None:
        self._db = db
        #: The events not yet written and the flusher task that writes them.
        self.buffer = BatchBuffer(
            self._write,
            name="job event",
            interval=interval,
            batch_max=batch_max,
            skip_reason="unknown job or duplicate seq",
        )

    def log(self, *, job_id: str, seq: int, ts: float, type: str, data: bytes) -> None:
        """Buffer one job event; never blocks and never raises for DB trouble.

        Called (through ``Store.log_job_event``) by the job manager for each event,
        from the event loop's thread; ``seq`` numbers the job's events from 1 up and
        ``data`` is the event's JSON as bytes.  The flusher writes the buffer every
        ``interval`` s, or at once at ``batch_max`` rows, and raises
        ``jobs.last_event_id`` to the highest ``seq`` written.  Events of unknown
        jobs and repeated ``(job_id, seq)`` are skipped; during an outage at most
        ``10 * batch_max`` events are kept (oldest dropped); both are counted in
        ``buffer.dropped``.  ``type`` is cut to 32 chars.  Not written yet means not
        visible to :meth:`read`: flush the buffer before a terminal job update.
        """
        self.buffer.add({"job_id": job_id, "seq": seq, "ts": ts, "type": type[:32], "data": data})

    async def read(
        self, job_id: str, *, after: int = 0, limit: int = 10000
    ) -> list[dict[str, Any]]:
        """Written events of a job with ``seq > after``, ascending, at most ``limit``.

        Each is ``{"seq", "ts", "type", "data"}`` (``data`` as bytes).  For replaying
        a job's history to a client that reconnects (``after`` = last seq it saw).
        """
        query = (
            sa.select(*_EVENT_COLUMNS)
            .where(_EVENTS.c.job_id == job_id, _EVENTS.c.seq > after)
            .order_by(_EVENTS.c.seq)
            .limit(limit)
        )
        return await self._db.run(
            lambda s: [dict(m) for m in s.connection().execute(query).mappings()]
        )

    def _write(self, batch: list[dict[str, Any]]) -> asyncio.Future[int]:
        """Schedule one batch insert on the DB thread (the buffer's ``write`` callable)."""
        return self._db.submit(self._write_sync, batch)

    def _write_sync(self, batch: list[dict[str, Any]]) -> int:
        """Insert ``batch`` and raise ``jobs.last_event_id`` in one transaction.

        Rows of unknown jobs and rows whose ``(job_id, seq)`` is already stored (or
        repeated in the batch) are skipped; their number is returned.  Only rows with
        ``seq <= last_event_id`` need a look-up, so the usual batch costs two queries.
        """
        jt, et = _JOBS, _EVENTS
        with self._db.transaction() as s:
            conn = s.connection()
            ids = {r["job_id"] for r in batch}
            known = dict(
                conn.execute(sa.select(jt.c.id, jt.c.last_event_id).where(jt.c.id.in_(ids)))
                .tuples()
                .all()
            )
            suspects: dict[str, set[int]] = {}
            for r in batch:
                last = known.get(r["job_id"])
                if last is not None and r["seq"] <= last:
                    suspects.setdefault(r["job_id"], set()).add(r["seq"])
            stored: set[tuple[str, int]] = set()
            for job_id, seqs in suspects.items():
                q = sa.select(et.c.seq).where(et.c.job_id == job_id, et.c.seq.in_(seqs))
                stored.update((job_id, seq) for seq in conn.execute(q).scalars())
            good: list[dict[str, Any]] = []
            top: dict[str, int] = {}
            for r in batch:
                key = (r["job_id"], r["seq"])
                if r["job_id"] in known and key not in stored:
                    stored.add(key)
                    good.append(r)
                    top[r["job_id"]] = max(top.get(r["job_id"], 0), r["seq"])
            if good:
                conn.execute(sa.insert(et), good)
                bump = (
                    sa.update(jt)
                    .where(jt.c.id == sa.bindparam("b_id"))
                    .where(jt.c.last_event_id < sa.bindparam("b_seq"))
                    .values(last_event_id=sa.bindparam("b_seq"))
                )
                conn.execute(bump, [{"b_id": k, "b_seq": n} for k, n in top.items()])
        return len(batch) - len(good)
