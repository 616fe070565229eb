"""The hub's async database facade, :class:`Store`, plus the engine/migration helpers.

The hub's tornado/asyncio loop must never block on the database, so every query
runs on one dedicated worker thread owned by :class:`Store`; the hub awaits the
store's coroutines.  The CLI (``phoebe-spawner upgrade-db``) uses the synchronous
:func:`make_engine`, :func:`schema_status` and :func:`upgrade_schema`, which live in
:mod:`phoebe_spawner.db_schema` and are re-exported here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import sessionmaker

from . import orm
from .batch import BatchBuffer
from .checkpoints import CheckpointQueries
from .jobs import JobQueries
from .schema import (
    DatabaseSchemaError,
    DatabaseUnavailable,
    as_unavailable,
    is_outage,
    make_engine,
    prepare_schema,
    schema_status,
    upgrade_schema,
)

__all__ = [
    "DatabaseSchemaError",
    "DatabaseUnavailable",
    "Store",
    "make_engine",
    "schema_status",
    "upgrade_schema",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

_COLUMN_KEYS: dict[type[orm.Base], tuple[str, ...]] = {}
_SESSION_KEYS = frozenset(a.key for a in sa.inspect(orm.Session).column_attrs)
_NO_TRUNCATE = frozenset({"id", "user_id", "status", "spawner_class"})
_TABLES = orm.Base.metadata.tables


# ------------------------------------------------------------------------- helpers


def _as_dict(obj: orm.Base) -> dict[str, Any]:
    """A row as a plain dict of its column attributes (``meta`` for ``metadata``)."""
    cls = type(obj)
    keys = _COLUMN_KEYS.get(cls)
    if keys is None:
        keys = _COLUMN_KEYS[cls] = tuple(a.key for a in sa.inspect(cls).column_attrs)
    return {k: getattr(obj, k) for k in keys}


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


def _truncate(value: str | None, length: int) -> str | None:
    return value[:length] if value is not None and len(value) > length else value


# --------------------------------------------------------------------------- store


class Store(JobQueries, CheckpointQueries):
    """Async facade over the database; the hub creates one at start-up and awaits it.

    Owns one single-thread executor: every public coroutine runs its SQL there, so
    the event loop never blocks and SQLite sees a single writer per process.  Rows
    come back as plain dicts.  Outages raise :class:`DatabaseUnavailable`.
    :meth:`log_command` and :meth:`log_job_event` are synchronous and only buffer;
    flusher tasks started by :meth:`init` write the buffers in batches
    (``command_flush_interval``/``command_batch_max`` apply to both).  The job
    methods come from :class:`~phoebe_spawner.db_jobs.JobQueries`, the checkpoint
    methods from :class:`~phoebe_spawner.db_checkpoints.CheckpointQueries`.
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
        self._url = url
        self._echo = echo
        self._busy_ms = sqlite_busy_timeout_ms
        self.metrics_keep = metrics_keep
        self.command_flush_interval = command_flush_interval
        self.command_batch_max = command_batch_max
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phoebe-spawner-db")
        self._engine: Engine | None = None
        self._sm: sessionmaker[OrmSession] | None = None
        self._commands = BatchBuffer(
            self._write_commands,
            name="command log",
            interval=command_flush_interval,
            batch_max=command_batch_max,
            skip_reason="unknown session",
        )
        self._init_job_events(interval=command_flush_interval, batch_max=command_batch_max)
        self._closing = False
        self._closed = False
        self.last_outage: float | None = None

    # -- plumbing ------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The engine (after :meth:`init`); only for tests/diagnostics, not for queries."""
        if self._engine is None:
            raise RuntimeError("Store.init() has not been awaited")
        return self._engine

    @property
    def pending_commands(self) -> int:
        """Number of logged commands not yet written (for health/metrics endpoints)."""
        return self._commands.pending

    @property
    def commands_dropped(self) -> int:
        """Logged commands lost (buffer overflow in an outage, unknown session, closed)."""
        return self._commands.dropped

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` (on the DB thread), turning outages into :class:`DatabaseUnavailable`."""
        try:
            return fn(*args)
        except Exception as exc:
            if is_outage(exc):
                self.last_outage = time.time()
                raise as_unavailable(exc) from exc
            raise

    def recently_unavailable(self, within: float = 30.0) -> bool:
        """Whether an operation failed for lack of the database in the last ``within`` s
        (health checks: a read may succeed while writes are locked out)."""
        return self.last_outage is not None and time.time() - self.last_outage < within

    def _submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        if self._closed:
            raise DatabaseUnavailable("database store is closed")
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, functools.partial(self._call, fn, *args))

    async def _run(self, fn: Callable[[OrmSession], T]) -> T:
        """Run ``fn(orm_session)`` on the DB thread and return its result."""
        if self._sm is None:
            raise RuntimeError("Store.init() has not been awaited")
        sm = self._sm

        def work() -> T:
            with sm() as session:
                return fn(session)

        return await self._submit(work)

    async def _get(self, model: type[orm.Base], where: Any) -> dict[str, Any] | None:
        """The one row of ``model`` matching ``where`` as a dict, or ``None``."""
        query = sa.select(model).where(where)
        return await self._run(lambda s: next((_as_dict(r) for r in s.scalars(query)), None))

    async def _list(self, query: Any, *, reverse: bool = False) -> list[dict[str, Any]]:
        """All rows of an ORM ``query`` as dicts (``reverse``: in reverse order)."""
        rows = await self._run(lambda s: [_as_dict(r) for r in s.scalars(query)])
        return rows[::-1] if reverse else rows

    def _init_sync(self, upgrade: bool) -> str:
        if self._engine is None:
            self._engine = make_engine(
                self._url, echo=self._echo, sqlite_busy_timeout_ms=self._busy_ms
            )
            self._sm = sessionmaker(self._engine, expire_on_commit=False)
        return prepare_schema(self._engine, upgrade)

    async def init(self, *, upgrade: bool = False) -> None:
        """Connect, check/create the schema and start the command-log/job-event flushers.

        Called once by the hub at start-up (calling it again only re-checks).  A
        fresh/empty DB is migrated to head; an older one is upgraded when ``upgrade``
        is true, else :class:`DatabaseSchemaError` tells the admin to run
        ``phoebe-spawner upgrade-db``; a newer/unknown one always raises.
        """
        if self._closing:
            raise RuntimeError("Store is closed")
        revision = await self._submit(self._init_sync, upgrade)
        log.debug("database schema at revision %s", revision)
        self._commands.start()
        self._job_events.start()

    async def close(self) -> None:
        """Flush pending command logs and job events, stop the flushers and the engine.

        Called by the hub on shutdown; safe to call twice.
        """
        if self._closing:
            return
        self._closing = True
        try:
            for buffer in (self._job_events, self._commands):
                await buffer.shutdown(final_flush=self._sm is not None)
            if self._engine is not None:
                await self._submit(self._engine.dispose)
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)

    async def ping(self) -> bool:
        """``SELECT 1``; True if the database answers (health checks)."""
        try:
            await self._run(lambda s: s.execute(sa.text("SELECT 1")).scalar())
        except Exception:
            return False
        return True

    # -- users ---------------------------------------------------------------------

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
        if not name:
            raise ValueError("user name must not be empty")
        user = orm.User(
            name=name,
            email=email,
            password_hash=password_hash,
            first_name=_truncate(first_name, 255),
            last_name=_truncate(last_name, 255),
            role=role,
            admin=admin,
            created_at=time.time(),
        )

        def work(s: OrmSession) -> dict[str, Any]:
            with s.begin():
                s.add(user)
            return _as_dict(user)

        try:
            return await self._run(work)
        except sa_exc.IntegrityError:
            return None

    async def get_user_by_name(self, name: str) -> dict[str, Any] | None:
        """The user called ``name``, or ``None`` (authenticators, admin API)."""
        return await self._get(orm.User, orm.User.name == name)

    async def get_user_by_id(self, user_id: int) -> dict[str, Any] | None:
        """The user with primary key ``user_id``, or ``None``."""
        return await self._get(orm.User, orm.User.id == user_id)

    async def ensure_user(
        self,
        *,
        name: str,
        email: str | None = None,
        full_name: str = "",
        role: str = "user",
        admin: bool = False,
    ) -> dict[str, Any]:
        """Create or update the user ``name`` on login (external/hub/none auth modes).

        The identity provider is authoritative: ``role`` and ``admin`` are always
        written, ``email`` and ``full_name`` (split into first/last name at the first
        space) only when given; ``last_seen`` is set to now.  ``is_active`` is left
        alone, so the caller must still refuse a deactivated user.
        """
        if not name:
            raise ValueError("user name must not be empty")
        first, _, last = full_name.strip().partition(" ")

        def work(s: OrmSession) -> dict[str, Any]:
            for attempt in range(2):
                now = time.time()
                try:
                    with s.begin():
                        query = sa.select(orm.User).where(orm.User.name == name)
                        user = s.scalars(query).one_or_none()
                        if user is None:
                            user = orm.User(name=name, created_at=now)
                            s.add(user)
                        if email is not None:
                            user.email = email
                        if full_name.strip():
                            user.first_name = _truncate(first, 255) or ""
                            user.last_name = _truncate(last.strip(), 255) or ""
                        user.role, user.admin, user.last_seen = role, admin, now
                    return _as_dict(user)
                except sa_exc.IntegrityError:
                    if attempt:  # a concurrent insert of the same name: retry once
                        raise
            raise AssertionError("unreachable")

        return await self._run(work)

    async def _update_user(self, name: str, **values: Any) -> bool:
        def work(s: OrmSession) -> bool:
            with s.begin():
                stmt = sa.update(orm.User).where(orm.User.name == name).values(**values)
                result: sa.CursorResult[Any] = s.execute(stmt)  # type: ignore[assignment]
                return result.rowcount > 0

        return await self._run(work)

    async def set_user_active(self, name: str, active: bool) -> bool:
        """(De)activate a user (admin API); False if there is no such user."""
        return await self._update_user(name, is_active=active)

    async def set_user_password(self, name: str, password_hash: str) -> bool:
        """Store a new password hash (jwt mode); False if there is no such user."""
        return await self._update_user(name, password_hash=password_hash)

    # -- sessions ------------------------------------------------------------------

    async def create_session(self, **fields: Any) -> None:
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
            await self._run(work)
        except sa_exc.IntegrityError as exc:
            raise ValueError(f"cannot create session {fields.get('id')!r}: {exc.orig}") from exc

    async def update_session(self, session_id: str, **fields: Any) -> None:
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

        await self._run(work)

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        """The session ``session_id`` as a dict, or ``None``."""
        return await self._get(orm.Session, orm.Session.id == session_id)

    async def list_sessions(
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
        return await self._list(query)

    # -- metrics -------------------------------------------------------------------

    async def record_metric(
        self, session_id: str, ts: float, mem_used: float, cpu_percent: float | None = None
    ) -> None:
        """Store one resource sample (activity monitor); keeps the newest ``metrics_keep``.

        Raises ``KeyError`` for an unknown session.
        """
        t = _TABLES["session_metrics"]
        cutoff = (
            sa.select(t.c.id)
            .where(t.c.session_id == session_id)
            .order_by(t.c.id.desc())
            .limit(1)
            .offset(self.metrics_keep)
            .scalar_subquery()
        )
        row = {"session_id": session_id, "ts": ts, "mem_used": mem_used, "cpu_percent": cpu_percent}

        def work(s: OrmSession) -> None:
            with s.begin():
                conn = s.connection()
                conn.execute(sa.insert(t), row)
                # One index range scan of metrics_keep entries; deletes 0-1 rows normally.
                conn.execute(sa.delete(t).where(t.c.session_id == session_id, t.c.id <= cutoff))

        try:
            await self._run(work)
        except sa_exc.IntegrityError as exc:
            raise KeyError(session_id) from exc

    async def get_metrics(self, session_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` samples of a session, oldest first (dashboard graphs)."""
        m = orm.SessionMetric
        query = sa.select(m).where(m.session_id == session_id).order_by(m.id.desc()).limit(limit)
        return await self._list(query, reverse=True)

    # -- command log ---------------------------------------------------------------

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
        """Buffer one command-log row; never blocks and never raises for DB trouble.

        Called by the command proxy after each worker command, from the event loop's
        thread.  The flusher writes the buffer every ``command_flush_interval`` s, or
        at once when it holds ``command_batch_max`` rows, and bumps
        ``sessions.command_count``.  During an outage at most
        ``10 * command_batch_max`` rows are kept (oldest dropped, counted in
        :attr:`commands_dropped`).  ``command``/``error`` are cut to 64/1000 chars.
        """
        self._commands.add(
            {
                "session_id": session_id,
                "user_id": user_id,
                "command": command[:64],
                "started_at": started_at,
                "duration_ms": duration_ms,
                "success": bool(success),
                "error": _truncate(error, 1000),
            }
        )

    async def flush_commands(self) -> None:
        """Write the buffered command rows now (shutdown, tests).

        Raises :class:`DatabaseUnavailable` if the database cannot be written; the
        rows then stay buffered for the flusher to retry.
        """
        await self._commands.flush()

    def _write_commands(self, batch: list[dict[str, Any]]) -> asyncio.Future[int]:
        """Schedule one batch insert on the DB thread (the buffer's ``write`` callable)."""
        return self._submit(self._write_commands_sync, batch)

    def _write_commands_sync(self, batch: list[dict[str, Any]]) -> int:
        """Insert ``batch`` and bump ``sessions.command_count`` in one transaction.

        Rows of unknown sessions are skipped; their number is returned.
        """
        assert self._sm is not None
        st, ct = _TABLES["sessions"], _TABLES["session_commands"]
        with self._sm.begin() as s:
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

    async def list_commands(self, session_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` written command rows of a session, oldest first."""
        c = orm.SessionCommand
        query = sa.select(c).where(c.session_id == session_id).order_by(c.id.desc()).limit(limit)
        return await self._list(query, reverse=True)
