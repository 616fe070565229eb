"""Queries for async jobs and their event history: the :class:`JobQueries` mixin.

:class:`phoebe_spawner.db.Store` inherits :class:`JobQueries`; the hub's job manager
calls these methods on the store (never this module directly).  A *job* is one
long command (e.g. PHOEBE ``run_compute``) submitted to a session asynchronously;
its row in ``jobs`` holds the status, request and result, and ``job_events`` holds
every event it produced, so a finished job survives a hub restart.

Like the rest of the store, every query runs on the store's single DB thread and
driver outages surface as :class:`~phoebe_spawner.db.DatabaseUnavailable`.  Events
are not written one by one: :meth:`JobQueries.log_job_event` only buffers them and a
:class:`~phoebe_spawner.db_commands.BatchBuffer` flusher writes them in batches.

Ordering contract for the job manager: events are buffered, job updates are not.
Before writing a terminal status (``succeeded``/``failed``/``cancelled``) with
:meth:`JobQueries.update_job`, log the terminal event and ``await``
:meth:`JobQueries.flush_job_events`; then a reader who sees the terminal status
also finds the complete event history in the database.

Split out of ``db.py`` only to keep modules small.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session as OrmSession

from . import orm
from .batch import BatchBuffer

if TYPE_CHECKING:
    from sqlalchemy.orm import sessionmaker

__all__ = ["JobQueries"]

T = TypeVar("T")

_JOBS = orm.Base.metadata.tables["jobs"]
_EVENTS = orm.Base.metadata.tables["job_events"]
#: Columns returned by get_job/list_jobs: all but the (possibly huge) blobs.
_SUMMARY = tuple(c for c in _JOBS.c if c.name not in ("request", "result"))
_EVENT_COLUMNS = (_EVENTS.c.seq, _EVENTS.c.ts, _EVENTS.c.type, _EVENTS.c.data)
_UPDATABLE = frozenset(_JOBS.c.keys()) - {"id"}
#: String columns whose over-long values are cut instead of rejected.
_TRUNCATE = {"command": 64, "message": 512, "error": 2000}
_UNFINISHED = ("queued", "running")


def _check_status(status: Any) -> None:
    if status not in orm.JOB_STATUSES:
        raise ValueError(f"invalid job status {status!r}; expected one of {orm.JOB_STATUSES}")


def _job_values(fields: dict[str, Any]) -> dict[str, Any]:
    """Validate ``update_job`` fields: names, status; cut long text; fill ``result_size``."""
    if "id" in fields:
        raise TypeError("a job's id cannot be changed")
    unknown = set(fields) - _UPDATABLE
    if unknown:
        raise TypeError(f"unknown job field(s): {', '.join(sorted(unknown))}")
    if "status" in fields:
        _check_status(fields["status"])
    out = dict(fields)
    for key, length in _TRUNCATE.items():
        value = out.get(key)
        if isinstance(value, str) and len(value) > length:
            out[key] = value[:length]
    if "result" in out and "result_size" not in out:
        out["result_size"] = None if out["result"] is None else len(out["result"])
    return out


class JobQueries:
    """Job and job-event methods of :class:`~phoebe_spawner.db.Store` (a mixin).

    Relies on the store's ``_run``/``_submit``/``_sm`` plumbing; the store calls
    :meth:`_init_job_events` from its constructor and starts/stops/flushes the
    event buffer (``_job_events``) together with its command-log buffer.
    """

    if TYPE_CHECKING:
        _sm: sessionmaker[OrmSession] | None

        def _submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]: ...

        async def _run(self, fn: Callable[[OrmSession], T]) -> T: ...

    _job_events: BatchBuffer

    def _init_job_events(self, *, interval: float, batch_max: int) -> None:
        """Create the job-event buffer (``Store.__init__``); flusher settings as for commands."""
        self._job_events = BatchBuffer(
            self._write_job_events,
            name="job event",
            interval=interval,
            batch_max=batch_max,
            skip_reason="unknown job or duplicate seq",
        )

    @property
    def pending_job_events(self) -> int:
        """Number of logged job events not yet written (health/metrics endpoints)."""
        return self._job_events.pending

    @property
    def job_events_dropped(self) -> int:
        """Job events lost (buffer overflow in an outage, unknown job, duplicate, closed)."""
        return self._job_events.dropped

    # -- jobs ----------------------------------------------------------------------

    async def create_job(
        self,
        *,
        id: str,
        session_id: str,
        user_id: str,
        command: str,
        request: bytes,
        created_at: float,
        status: str = "queued",
    ) -> None:
        """Insert a job row when the job manager accepts a submission.

        ``request`` is the JSON request body as bytes.  ``command`` is cut to 64
        chars.  Raises ``ValueError`` for a duplicate id, an unknown session or an
        invalid ``status``.
        """
        _check_status(status)
        row = {
            "id": id,
            "session_id": session_id,
            "user_id": user_id,
            "command": command[:64],
            "request": request,
            "status": status,
            "created_at": created_at,
            "last_event_id": 0,
        }

        def work(s: OrmSession) -> None:
            with s.begin():
                s.connection().execute(sa.insert(_JOBS), row)

        try:
            await self._run(work)
        except sa_exc.IntegrityError as exc:
            raise ValueError(f"cannot create job {id!r}: {exc.orig}") from exc

    async def update_job(self, job_id: str, **fields: Any) -> None:
        """Set columns of job ``job_id`` (status changes, progress, message, result).

        Written at once, not buffered.  Giving ``result`` without ``result_size``
        sets ``result_size`` to ``len(result)``; ``message``/``error``/``command``
        are cut to their column lengths.  For a terminal status, first log the
        terminal event and ``await flush_job_events()`` so that the event history
        is in the database before the status says the job is over.

        Raises ``KeyError`` for an unknown job, ``TypeError`` for unknown field names
        (or ``id``), ``ValueError`` for an invalid ``status``.
        """
        values = _job_values(fields)

        def work(s: OrmSession) -> None:
            with s.begin():
                conn = s.connection()
                if values:
                    stmt = sa.update(_JOBS).where(_JOBS.c.id == job_id).values(values)
                    found = conn.execute(stmt).rowcount > 0
                else:
                    stmt_id = sa.select(_JOBS.c.id).where(_JOBS.c.id == job_id)
                    found = conn.execute(stmt_id).first() is not None
            if not found:
                raise KeyError(job_id)

        await self._run(work)

    async def get_job(self, job_id: str, *, with_result: bool = False) -> dict[str, Any] | None:
        """Job ``job_id`` as a dict of its columns, or ``None`` (status/result endpoints).

        ``request`` is never included (see :meth:`get_job_request`); ``result``
        (bytes or ``None``) only when ``with_result``, since it may be tens of MB.
        """
        cols = (*_SUMMARY, _JOBS.c.result) if with_result else _SUMMARY
        query = sa.select(*cols).where(_JOBS.c.id == job_id)

        def work(s: OrmSession) -> dict[str, Any] | None:
            found = s.connection().execute(query).mappings().first()
            return None if found is None else dict(found)

        return await self._run(work)

    async def get_job_request(self, job_id: str) -> bytes | None:
        """The stored request body of job ``job_id``, or ``None`` for an unknown job."""
        query = sa.select(_JOBS.c.request).where(_JOBS.c.id == job_id)
        return await self._run(lambda s: s.connection().execute(query).scalar_one_or_none())

    async def list_jobs(
        self,
        *,
        user_id: str,
        session_id: str | None = None,
        statuses: Iterable[str] | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of a user's jobs, newest (``created_at``) first, and the total count.

        Returns ``(rows, total)``: ``rows`` are dicts like :meth:`get_job` without
        ``result``; ``total`` counts every job matching the filters, ignoring
        ``limit``/``offset`` (for pagination).  Only ``user_id``'s jobs are ever
        listed.  Raises ``ValueError`` for a negative ``limit`` or ``offset``.
        """
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must be >= 0")
        where: list[sa.ColumnElement[bool]] = [_JOBS.c.user_id == user_id]
        if session_id is not None:
            where.append(_JOBS.c.session_id == session_id)
        if statuses is not None:
            where.append(_JOBS.c.status.in_(list(statuses)))
        query = (
            sa.select(*_SUMMARY)
            .where(*where)
            .order_by(_JOBS.c.created_at.desc(), _JOBS.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        count = sa.select(sa.func.count()).select_from(_JOBS).where(*where)

        def work(s: OrmSession) -> tuple[list[dict[str, Any]], int]:
            conn = s.connection()
            total = conn.execute(count).scalar_one()
            return [dict(m) for m in conn.execute(query).mappings()], total

        return await self._run(work)

    async def fail_unfinished_jobs(
        self, reason: str, *, now: float, session_id: str | None = None
    ) -> list[str]:
        """Mark every queued/running job failed (``error=reason``, ``finished_at=now``).

        Called by the job manager at hub start-up (jobs do not survive a restart),
        or with ``session_id`` when one session ends.  Returns the ids of the jobs
        it failed, oldest first.  ``reason`` is cut to 2000 chars.
        """
        where: list[sa.ColumnElement[bool]] = [_JOBS.c.status.in_(_UNFINISHED)]
        if session_id is not None:
            where.append(_JOBS.c.session_id == session_id)
        select = sa.select(_JOBS.c.id).where(*where).order_by(_JOBS.c.created_at, _JOBS.c.id)
        update = (
            sa.update(_JOBS)
            .where(*where)
            .values(status="failed", error=reason[:2000], finished_at=now)
        )

        def work(s: OrmSession) -> list[str]:
            with s.begin():
                conn = s.connection()
                ids = list(conn.execute(select).scalars())
                if ids:
                    conn.execute(update)  # only this thread writes: same rows as `select`
            return ids

        return await self._run(work)

    async def purge_jobs(self, *, finished_before: float) -> int:
        """Delete finished jobs (and their events) with ``finished_at < finished_before``.

        For a retention policy of the job manager (results may be tens of MB each);
        unfinished jobs are never deleted.  Returns the number of jobs deleted.
        """
        stmt = sa.delete(_JOBS).where(
            _JOBS.c.status.in_(orm.JOB_TERMINAL_STATUSES),
            _JOBS.c.finished_at < finished_before,
        )

        def work(s: OrmSession) -> int:
            with s.begin():
                return s.connection().execute(stmt).rowcount

        return await self._run(work)

    # -- job events ----------------------------------------------------------------

    def log_job_event(self, *, job_id: str, seq: int, ts: float, type: str, data: bytes) -> None:
        """Buffer one job event; never blocks and never raises for DB trouble.

        Called by the job manager for each event (progress, log line, terminal
        event), from the event loop's thread; ``seq`` numbers the job's events from
        1 up and ``data`` is the event's JSON as bytes.  The flusher writes the
        buffer every ``command_flush_interval`` s, or at once at
        ``command_batch_max`` rows, and raises ``jobs.last_event_id`` to the highest
        ``seq`` written.  Events of unknown jobs and repeated ``(job_id, seq)`` are
        skipped; during an outage at most ``10 * command_batch_max`` events are kept
        (oldest dropped); both are counted in :attr:`job_events_dropped`.  ``type``
        is cut to 32 chars.  Not written yet means not visible to
        :meth:`get_job_events`: call :meth:`flush_job_events` before a terminal
        :meth:`update_job`.
        """
        self._job_events.add(
            {"job_id": job_id, "seq": seq, "ts": ts, "type": type[:32], "data": data}
        )

    async def flush_job_events(self) -> None:
        """Write every job event buffered so far (job manager before a terminal update).

        When it returns, all events logged before the call are in the database
        (or were dropped, see :meth:`log_job_event`).  Raises
        :class:`~phoebe_spawner.db.DatabaseUnavailable` if the database cannot be
        written; the events then stay buffered for the flusher to retry.
        """
        await self._job_events.flush()

    async def get_job_events(
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
        return await self._run(
            lambda s: [dict(m) for m in s.connection().execute(query).mappings()]
        )

    def _write_job_events(self, batch: list[dict[str, Any]]) -> asyncio.Future[int]:
        """Schedule one batch insert on the DB thread (the buffer's ``write`` callable)."""
        return self._submit(self._write_job_events_sync, batch)

    def _write_job_events_sync(self, batch: list[dict[str, Any]]) -> int:
        """Insert ``batch`` and raise ``jobs.last_event_id`` in one transaction.

        Rows of unknown jobs and rows whose ``(job_id, seq)`` is already stored (or
        repeated in the batch) are skipped; their number is returned.  Only rows with
        ``seq <= last_event_id`` need a look-up, so the usual batch costs two queries.
        """
        assert self._sm is not None
        jt, et = _JOBS, _EVENTS
        with self._sm.begin() as s:
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
