"""The hub's async database facade, :class:`Store`: the one object callers use.

The hub builds one :class:`Store` at start-up (``PhoebeSpawnerApp``, and the
``upgrade-db``/``create-user`` subcommands) and hands it to the session manager,
job manager, checkpoint code, accounts and handlers; they await its coroutines and
get rows back as plain dicts.  The store itself holds no SQL: it composes

- a :class:`~phoebe_spawner.store.engine.DatabaseThread` (the engine and the one
  thread every query runs on, so the event loop never blocks),
- the query objects by area: :class:`~phoebe_spawner.store.users.UserQueries`,
  :class:`~phoebe_spawner.store.sessions.SessionQueries`,
  :class:`~phoebe_spawner.store.metrics.MetricQueries`,
  :class:`~phoebe_spawner.store.jobs.JobQueries`,
  :class:`~phoebe_spawner.store.checkpoints.CheckpointQueries`,
- the two batched logs: :class:`~phoebe_spawner.store.commands.CommandLog` and
  :class:`~phoebe_spawner.store.job_events.JobEventLog`,

and keeps their life cycle (:meth:`Store.init`, :meth:`Store.close`).  Each method
below says in one line what it does; the full contract (validation, truncation,
errors) is in the docstring of the query method it calls.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .checkpoints import CheckpointQueries
from .commands import CommandLog
from .engine import DatabaseThread
from .job_events import JobEventLog
from .jobs import JobQueries
from .metrics import MetricQueries
from .schema import prepare_schema
from .sessions import SessionQueries
from .users import UserQueries

__all__ = ["Store"]

log = logging.getLogger(__name__)


class Store:
    """Async facade over the database; the hub creates one at start-up and awaits it.

    Every coroutine runs its SQL on one database thread, so the event loop never
    blocks and SQLite sees a single writer per process.  Rows come back as plain
    dicts.  Outages raise :class:`~phoebe_spawner.store.DatabaseUnavailable`.
    :meth:`log_command` and :meth:`log_job_event` are synchronous and only buffer;
    flusher tasks started by :meth:`init` write the buffers in batches
    (``command_flush_interval``/``command_batch_max`` apply to both).
    """

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        metrics_keep: int = 720,
        command_flush_interval: float = 0.5,
        command_batch_max: int = 500,
        sqlite_busy_timeout_ms: int = 5000,
    ) -> None:
        if metrics_keep < 1 or command_batch_max < 1 or command_flush_interval <= 0:
            raise ValueError("metrics_keep, command_batch_max and the interval must be > 0")
        self.command_flush_interval = command_flush_interval
        self.command_batch_max = command_batch_max
        self._db = DatabaseThread(url, echo=echo, sqlite_busy_timeout_ms=sqlite_busy_timeout_ms)
        self._users = UserQueries(self._db)
        self._sessions = SessionQueries(self._db)
        self._metrics = MetricQueries(self._db, keep=metrics_keep)
        self._jobs = JobQueries(self._db)
        self._checkpoints = CheckpointQueries(self._db)
        interval, batch_max = command_flush_interval, command_batch_max
        self._commands = CommandLog(self._db, interval=interval, batch_max=batch_max)
        self._job_events = JobEventLog(self._db, interval=interval, batch_max=batch_max)
        self._closing = False

    # -- life cycle and health -----------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The engine (after :meth:`init`); only for tests/diagnostics, not for queries."""
        return self._db.engine

    @property
    def metrics_keep(self) -> int:
        """Resource samples kept per session (older ones are deleted as new ones come)."""
        return self._metrics.keep

    @property
    def last_outage(self) -> float | None:
        """``time.time()`` of the last operation that failed for lack of the database."""
        return self._db.last_outage

    @property
    def pending_commands(self) -> int:
        """Number of logged commands not yet written (for health/metrics endpoints)."""
        return self._commands.buffer.pending

    @property
    def commands_dropped(self) -> int:
        """Logged commands lost (buffer overflow in an outage, unknown session, closed)."""
        return self._commands.buffer.dropped

    @property
    def pending_job_events(self) -> int:
        """Number of logged job events not yet written (health/metrics endpoints)."""
        return self._job_events.buffer.pending

    @property
    def job_events_dropped(self) -> int:
        """Job events lost (buffer overflow in an outage, unknown job, duplicate, closed)."""
        return self._job_events.buffer.dropped

    def recently_unavailable(self, within: float = 30.0) -> bool:
        """Whether an operation failed for lack of the database in the last ``within`` s
        (health checks: a read may succeed while writes are locked out)."""
        return self._db.recently_unavailable(within)

    def _prepare(self, upgrade: bool) -> str:
        """Connect and check/migrate the schema (on the database thread)."""
        return prepare_schema(self._db.connect(), upgrade)

    async def init(self, *, upgrade: bool = False) -> None:
        """Connect, check/create the schema and start the command-log/job-event flushers.

        Called once by the hub at start-up (calling it again only re-checks).  A
        fresh/empty DB is migrated to head; an older one is upgraded when ``upgrade``
        is true, else :class:`~phoebe_spawner.store.DatabaseSchemaError` tells the
        admin to run ``phoebe-spawner upgrade-db``; a newer/unknown one always raises.
        """
        if self._closing:
            raise RuntimeError("Store is closed")
        revision = await self._db.submit(self._prepare, upgrade)
        log.debug("database schema at revision %s", revision)
        self._commands.buffer.start()
        self._job_events.buffer.start()

    async def close(self) -> None:
        """Flush pending command logs and job events, stop the flushers and the engine.

        Called by the hub on shutdown; safe to call twice.
        """
        if self._closing:
            return
        self._closing = True
        try:
            for buffer in (self._job_events.buffer, self._commands.buffer):
                await buffer.shutdown(final_flush=self._db.connected)
        finally:
            await self._db.close()

    async def ping(self) -> bool:
        """``SELECT 1``; True if the database answers (health checks)."""
        try:
            await self._db.run(lambda s: s.execute(sa.text("SELECT 1")).scalar())
        except Exception:
            return False
        return True

    # -- users (UserQueries) -------------------------------------------------------

    async def create_user(
        self,
        *,
        name: str,
        email: str | None,
        password_hash: str | None,
        first_name: str = "",
        last_name: str = "",
        role: str = "user",
        admin: bool = False,
    ) -> dict[str, Any] | None:
        """Insert a user (jwt-mode sign-up/admin); ``None`` if ``name`` is taken."""
        return await self._users.create(
            name=name,
            email=email,
            password_hash=password_hash,
            first_name=first_name,
            last_name=last_name,
            role=role,
            admin=admin,
        )

    async def get_user_by_name(self, name: str) -> dict[str, Any] | None:
        """The user called ``name``, or ``None`` (authenticators, admin API)."""
        return await self._users.by_name(name)

    async def get_user_by_id(self, user_id: int) -> dict[str, Any] | None:
        """The user with primary key ``user_id``, or ``None``."""
        return await self._users.by_id(user_id)

    async def ensure_user(
        self,
        *,
        name: str,
        email: str | None = None,
        full_name: str = "",
        role: str = "user",
        admin: bool = False,
    ) -> dict[str, Any]:
        """Create or update the user ``name`` on login (see :meth:`UserQueries.ensure`)."""
        return await self._users.ensure(
            name=name, email=email, full_name=full_name, role=role, admin=admin
        )

    async def set_user_active(self, name: str, active: bool) -> bool:
        """(De)activate a user (admin API); False if there is no such user."""
        return await self._users.update(name, is_active=active)

    async def set_user_password(self, name: str, password_hash: str) -> bool:
        """Store a new password hash (jwt mode); False if there is no such user."""
        return await self._users.update(name, password_hash=password_hash)

    # -- sessions (SessionQueries) -------------------------------------------------

    async def create_session(self, **fields: Any) -> None:
        """Insert a session row (spawn handler; see :meth:`SessionQueries.create`)."""
        await self._sessions.create(**fields)

    async def update_session(self, session_id: str, **fields: Any) -> None:
        """Set columns of a session; ``KeyError`` if there is none, ``TypeError`` for bad names."""
        await self._sessions.update(session_id, **fields)

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        """The session ``session_id`` as a dict, or ``None``."""
        return await self._sessions.get(session_id)

    async def list_sessions(
        self,
        *,
        user_id: str | None = None,
        statuses: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Sessions, newest (``created_at``) first, optionally by user and status."""
        return await self._sessions.find(user_id=user_id, statuses=statuses, limit=limit)

    # -- metrics (MetricQueries) ---------------------------------------------------

    async def record_metric(
        self, session_id: str, ts: float, mem_used: float, cpu_percent: float | None = None
    ) -> None:
        """Store one resource sample, keeping the newest ``metrics_keep``; ``KeyError``
        for an unknown session."""
        await self._metrics.record(session_id, ts, mem_used, cpu_percent)

    async def record_metrics(self, rows: list[tuple[str, float, float]]) -> int:
        """Store ``(session_id, ts, mem_used)`` samples in one transaction (the memory
        loop's round); rows of unknown sessions are skipped and counted in the result."""
        return await self._metrics.record_many(rows)

    async def get_metrics(self, session_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` samples of a session, oldest first (dashboard graphs)."""
        return await self._metrics.newest(session_id, limit=limit)

    # -- command log (CommandLog) --------------------------------------------------

    def log_command(
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
        """Buffer one command-log row; never blocks or raises (see :meth:`CommandLog.log`)."""
        self._commands.log(
            session_id=session_id,
            user_id=user_id,
            command=command,
            started_at=started_at,
            duration_ms=duration_ms,
            success=success,
            error=error,
        )

    async def flush_commands(self) -> None:
        """Write the buffered command rows now (shutdown, tests).

        Raises :class:`~phoebe_spawner.store.DatabaseUnavailable` if the database
        cannot be written; the rows then stay buffered for the flusher to retry.
        """
        await self._commands.buffer.flush()

    async def list_commands(self, session_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` written command rows of a session, oldest first."""
        return await self._commands.newest(session_id, limit=limit)

    # -- jobs (JobQueries) ---------------------------------------------------------

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
        """Insert a job row for an accepted submission (see :meth:`JobQueries.create`)."""
        await self._jobs.create(
            id=id,
            session_id=session_id,
            user_id=user_id,
            command=command,
            request=request,
            created_at=created_at,
            status=status,
        )

    async def update_job(self, job_id: str, **fields: Any) -> None:
        """Set columns of a job, unbuffered; flush its events before a terminal status."""
        await self._jobs.update(job_id, **fields)

    async def get_job(self, job_id: str, *, with_result: bool = False) -> dict[str, Any] | None:
        """Job ``job_id`` without its request (``result`` only if asked), or ``None``."""
        return await self._jobs.get(job_id, with_result=with_result)

    async def get_job_request(self, job_id: str) -> bytes | None:
        """The stored request body of job ``job_id``, or ``None`` for an unknown job."""
        return await self._jobs.request(job_id)

    async def list_jobs(
        self,
        *,
        user_id: str,
        session_id: str | None = None,
        statuses: Iterable[str] | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of a user's jobs, newest first, and the total (:meth:`JobQueries.page`)."""
        return await self._jobs.page(
            user_id=user_id, session_id=session_id, statuses=statuses, limit=limit, offset=offset
        )

    async def fail_unfinished_jobs(
        self, reason: str, *, now: float, session_id: str | None = None
    ) -> list[str]:
        """Mark every queued/running job (of one session) failed; returns their ids."""
        return await self._jobs.fail_unfinished(reason, now=now, session_id=session_id)

    async def purge_jobs(self, *, finished_before: float) -> int:
        """Delete finished jobs (and events) finished before a time; returns how many."""
        return await self._jobs.purge(finished_before=finished_before)

    # -- job events (JobEventLog) --------------------------------------------------

    def log_job_event(self, *, job_id: str, seq: int, ts: float, type: str, data: bytes) -> None:
        """Buffer one job event; never blocks or raises (see :meth:`JobEventLog.log`)."""
        self._job_events.log(job_id=job_id, seq=seq, ts=ts, type=type, data=data)

    async def flush_job_events(self) -> None:
        """Write every job event buffered so far (job manager before a terminal update).

        When it returns, all events logged before the call are in the database
        (or were dropped, see :meth:`JobEventLog.log`).  Raises
        :class:`~phoebe_spawner.store.DatabaseUnavailable` if the database cannot be
        written; the events then stay buffered for the flusher to retry.
        """
        await self._job_events.buffer.flush()

    async def get_job_events(
        self, job_id: str, *, after: int = 0, limit: int = 10000
    ) -> list[dict[str, Any]]:
        """Written events of a job with ``seq > after``, ascending, at most ``limit``."""
        return await self._job_events.read(job_id, after=after, limit=limit)

    # -- checkpoints (CheckpointQueries) -------------------------------------------

    async def create_checkpoint(
        self,
        *,
        id: str,
        user_id: str,
        session_id: str | None,
        created_at: float,
        reason: str,
        path: str,
        size: int,
        sha256: str,
        name: str | None = None,
        project_name: str | None = None,
    ) -> dict[str, Any]:
        """Record a checkpoint whose file was just written (:meth:`CheckpointQueries.create`)."""
        return await self._checkpoints.create(
            id=id,
            user_id=user_id,
            session_id=session_id,
            created_at=created_at,
            reason=reason,
            path=path,
            size=size,
            sha256=sha256,
            name=name,
            project_name=project_name,
        )

    async def get_checkpoint(self, checkpoint_id: str) -> dict[str, Any] | None:
        """Checkpoint ``checkpoint_id`` (any user's: check ``user_id``), or ``None``."""
        return await self._checkpoints.get(checkpoint_id)

    async def list_checkpoints(
        self,
        *,
        user_id: str,
        session_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of a user's checkpoints, newest first, and the total."""
        return await self._checkpoints.page(
            user_id=user_id, session_id=session_id, limit=limit, offset=offset
        )

    async def delete_checkpoint(self, checkpoint_id: str) -> bool:
        """Delete a checkpoint's row (not its file); True if there was one."""
        return await self._checkpoints.delete(checkpoint_id)

    async def checkpoint_usage(self, user_id: str) -> tuple[int, int]:
        """``(count, total size in bytes)`` of a user's checkpoints (quota checks)."""
        return await self._checkpoints.usage(user_id)

    async def oldest_checkpoints(self, user_id: str, *, limit: int) -> list[dict[str, Any]]:
        """A user's ``limit`` oldest checkpoints, oldest first (retention pruning)."""
        return await self._checkpoints.oldest(user_id, limit=limit)
