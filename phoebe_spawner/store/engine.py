"""The engine and the one thread that uses it: how the store runs SQL off the event loop.

The hub's tornado/asyncio loop must never block on the database, so every query of
the store runs on the single thread of a :class:`DatabaseThread`; the query objects
(:mod:`~phoebe_spawner.store.users`, ``sessions``, ``metrics``, ``commands``,
``jobs``, ``job_events``, ``checkpoints``) hand it functions and await the result.
One thread also means SQLite sees a single writer per process.  Driver errors that
mean "database not usable now" leave the thread as
:class:`~phoebe_spawner.store.DatabaseUnavailable`.

:func:`make_engine` is also used on its own by tests (through
:mod:`phoebe_spawner.store`); :func:`sqlite_file` by the schema module's backups.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import sessionmaker

from . import orm
from .errors import DatabaseUnavailable, as_unavailable, is_outage

__all__ = ["DatabaseThread", "make_engine", "sqlite_file"]

T = TypeVar("T")


# --------------------------------------------------------------------------- engine


def sqlite_file(url: URL) -> Path | None:
    """The file of a plain SQLite file URL; ``None`` for in-memory and ``file:`` URIs."""
    db = url.database or ""
    if db in ("", ":memory:") or db.startswith("file:") or url.query.get("mode") == "memory":
        return None
    return Path(db).expanduser()


def _sqlite_on_connect(busy_timeout_ms: int, dbapi_conn: Any, _record: Any) -> None:
    """Set the pragmas every SQLite connection of the hub needs (engine ``connect`` hook)."""
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
    finally:
        cur.close()


def make_engine(url: str, *, echo: bool = False, sqlite_busy_timeout_ms: int = 5000) -> Engine:
    """Create the engine for ``url``; used by :class:`DatabaseThread` (and tests).

    SQLite: the parent directory is created (``~`` is expanded) and every connection
    gets WAL journaling, ``synchronous=NORMAL``, foreign keys and a busy timeout of
    ``sqlite_busy_timeout_ms``.  Other databases get ``pool_pre_ping``; a bare
    ``postgresql://`` / ``postgres://`` URL selects the psycopg (v3) driver.  Bound
    parameters are left out of error messages (they may hold password hashes)
    unless ``echo`` is on.
    """
    u = make_url(url)
    common: dict[str, Any] = {"echo": echo, "hide_parameters": not echo}
    if u.get_backend_name() == "sqlite":
        path = sqlite_file(u)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            u = u.set(database=str(path))
        timeout = {"timeout": sqlite_busy_timeout_ms / 1000}
        engine = sa.create_engine(u, connect_args=timeout, **common)
        hook = functools.partial(_sqlite_on_connect, sqlite_busy_timeout_ms)
        sa.event.listen(engine, "connect", hook)
        return engine
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    connect_args: dict[str, Any] = {}
    if u.get_backend_name() == "postgresql" and "connect_timeout" not in u.query:
        connect_args["connect_timeout"] = 10  # never hang the DB thread on a dead host
    return sa.create_engine(u, pool_pre_ping=True, connect_args=connect_args, **common)


# --------------------------------------------------------------------------- thread


class DatabaseThread:
    """One worker thread, the engine it owns, and the outage bookkeeping.

    Created by :class:`~phoebe_spawner.store.Store` and shared by its query objects.
    The engine is made lazily, on the thread, by :meth:`connect` (``Store.init``).
    :meth:`submit` runs any callable there; :meth:`run` runs a function of an ORM
    session there; both raise :class:`DatabaseUnavailable` for outages (and record
    the time in :attr:`last_outage`) and after :meth:`close`.
    """

    def __init__(self, url: str, *, echo: bool = False, sqlite_busy_timeout_ms: int = 5000) -> None:
        self._url = url
        self._echo = echo
        self._busy_ms = sqlite_busy_timeout_ms
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phoebe-spawner-db")
        self._engine: Engine | None = None
        self._sm: sessionmaker[OrmSession] | None = None
        self.closed = False
        #: ``time.time()`` of the last operation that failed for lack of the database.
        self.last_outage: float | None = None

    @property
    def engine(self) -> Engine:
        """The engine (after ``Store.init``); only for tests/diagnostics, not for queries."""
        if self._engine is None:
            raise RuntimeError("Store.init() has not been awaited")
        return self._engine

    @property
    def connected(self) -> bool:
        """Whether :meth:`connect` has made the engine (so there is something to flush to)."""
        return self._sm is not None

    def connect(self) -> Engine:
        """Make the engine and session factory if not done yet (on the thread); return it."""
        if self._engine is None:
            self._engine = make_engine(
                self._url, echo=self._echo, sqlite_busy_timeout_ms=self._busy_ms
            )
            self._sm = sessionmaker(self._engine, expire_on_commit=False)
        return self._engine

    @contextlib.contextmanager
    def transaction(self) -> Iterator[OrmSession]:
        """An ORM session in a transaction, committed at the end (code already on the thread)."""
        if self._sm is None:
            raise RuntimeError("Store.init() has not been awaited")
        with self._sm.begin() as session:
            yield session

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` (on the thread), turning outages into :class:`DatabaseUnavailable`."""
        try:
            return fn(*args)
        except Exception as exc:
            if is_outage(exc):
                self.last_outage = time.time()
                raise as_unavailable(exc) from exc
            raise

    def recently_unavailable(self, within: float = 30.0) -> bool:
        """Whether an operation failed for lack of the database in the last ``within`` s."""
        return self.last_outage is not None and time.time() - self.last_outage < within

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Schedule ``fn(*args)`` on the thread; raises :class:`DatabaseUnavailable` if closed."""
        if self.closed:
            raise DatabaseUnavailable("database store is closed")
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, functools.partial(self._call, fn, *args))

    async def run(self, fn: Callable[[OrmSession], T]) -> T:
        """Run ``fn(orm_session)`` on the thread and return its result."""
        if self._sm is None:
            raise RuntimeError("Store.init() has not been awaited")
        sm = self._sm

        def work() -> T:
            with sm() as session:
                return fn(session)

        return await self.submit(work)

    async def get(self, model: type[orm.Base], where: Any) -> dict[str, Any] | None:
        """The one row of ``model`` matching ``where`` as a dict, or ``None``."""
        query = sa.select(model).where(where)
        return await self.run(lambda s: next((orm.as_dict(r) for r in s.scalars(query)), None))

    async def rows(self, query: Any, *, reverse: bool = False) -> list[dict[str, Any]]:
        """All rows of an ORM ``query`` as dicts (``reverse``: in reverse order)."""
        found = await self.run(lambda s: [orm.as_dict(r) for r in s.scalars(query)])
        return found[::-1] if reverse else found

    async def close(self) -> None:
        """Dispose of the engine (on the thread), then refuse work and stop the thread."""
        try:
            if self._engine is not None:
                await self.submit(self._engine.dispose)
        finally:
            self.closed = True
            self._executor.shutdown(wait=False)
