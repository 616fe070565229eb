"""Queries on async jobs (the ``jobs`` table): :class:`JobQueries`.

The :class:`~phoebe_spawner.store.Store` owns one :class:`JobQueries` and exposes
its methods as ``create_job``, ``update_job``, ``get_job`` & co; the hub's job
manager calls the store, never this module.  A *job* is one long command (e.g.
PHOEBE ``run_compute``) submitted to a session asynchronously; its row in ``jobs``
holds the status, request and result, and ``job_events`` holds every event it
produced (see :mod:`~phoebe_spawner.store.job_events`), so a finished job survives
a hub restart.

Like the rest of the store, every query runs on the store's single DB thread and
driver outages surface as :class:`~phoebe_spawner.store.DatabaseUnavailable`.

Ordering contract for the job manager: events are buffered, job updates are not.
Before writing a terminal status (``succeeded``/``failed``/``cancelled``) with
``Store.update_job``, log the terminal event and ``await Store.flush_job_events()``;
then a reader who sees the terminal status also finds the complete event history
in the database.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session as OrmSession

from . import orm
from .engine import DatabaseThread

__all__ = ["JobQueries"]

_JOBS = orm.Base.metadata.tables["jobs"]
#: Columns returned by get_job/list_jobs: all but the (possibly huge) blobs.
_SUMMARY = tuple(c for c in _JOBS.c if c.name not in ("request", "result"))
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
    """Create, update, read, list, fail and purge job rows; queries run on ``db``'s thread.

    Rows come back as dicts of the ``jobs`` columns; ``request`` only through
    :meth:`request`, ``result`` only when asked for (both may be tens of MB).
    """

    def __init__(self, db: DatabaseThread) -> None:
        self._db = db

    async def create(
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
            await self._db.run(work)
        except sa_exc.IntegrityError as exc:
            raise ValueError(f"cannot create job {id!r}: {exc.orig}") from exc

    async def update(self, job_id: str, **fields: Any) -> None:
        """Set columns of job ``job_id`` (status changes, progress, message, result).

        Written at once, not buffered.  Giving ``result`` without ``result_size``
        sets ``result_size`` to ``len(result)``; ``message``/``error``/``command``
        are cut to their column lengths.  For a terminal status, first log the
        terminal event and ``await Store.flush_job_events()`` so that the event history
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

        await self._db.run(work)

    async def get(self, job_id: str, *, with_result: bool = False) -> dict[str, Any] | None:
        """Job ``job_id`` as a dict of its columns, or ``None`` (status/result endpoints).

        ``request`` is never included (see :meth:`request`); ``result``
        (bytes or ``None``) only when ``with_result``, since it may be tens of MB.
        """
        cols = (*_SUMMARY, _JOBS.c.result) if with_result else _SUMMARY
        query = sa.select(*cols).where(_JOBS.c.id == job_id)

        def work(s: OrmSession) -> dict[str, Any] | None:
            found = s.connection().execute(query).mappings().first()
            return None if found is None else dict(found)

        return await self._db.run(work)

    async def request(self, job_id: str) -> bytes | None:
        """The stored request body of job ``job_id``, or ``None`` for an unknown job."""
        query = sa.select(_JOBS.c.request).where(_JOBS.c.id == job_id)
        return await self._db.run(lambda s: s.connection().execute(query).scalar_one_or_none())

    async def page(
        self,
        *,
        user_id: str,
        session_id: str | None = None,
        statuses: Iterable[str] | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of a user's jobs, newest (``created_at``) first, and the total count.

        Returns ``(rows, total)``: ``rows`` are dicts like :meth:`get` without
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

        return await self._db.run(work)

    async def fail_unfinished(
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

        return await self._db.run(work)

    async def purge(self, *, finished_before: float) -> int:
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

        return await self._db.run(work)
