"""Schema versions and migrations of the hub's database (synchronous).

``Store.init`` calls :func:`prepare_schema` on its database thread (the hub at
start-up, and the ``phoebe-spawner upgrade-db`` subcommand with ``upgrade=True``);
tests call :func:`schema_status` and :func:`upgrade_schema` directly (import those
from :mod:`phoebe_spawner.store`).

The schema is owned by the alembic migrations in ``phoebe_spawner/alembic``;
alembic's ``alembic_version`` table is the schema version.  Alembic is imported
only inside functions so that importing this module stays cheap.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .engine import sqlite_file
from .errors import DatabaseSchemaError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

__all__ = ["ALEMBIC_DIR", "prepare_schema", "schema_status", "upgrade_schema"]

log = logging.getLogger(__name__)

#: Directory of the alembic environment (tests point it at a copy with extra revisions).
ALEMBIC_DIR = Path(__file__).parent.parent / "alembic"
#: alembic's ``context``/``op`` proxies are module globals: one migration at a time.
_ALEMBIC_LOCK = threading.Lock()
_UPGRADE_HINT = "run `phoebe-spawner upgrade-db`"


def _alembic_config(connection: Connection | None = None, location: str | None = None) -> Config:
    """Build the in-code alembic config (no alembic.ini), optionally with a connection."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", (location or str(ALEMBIC_DIR)).replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@functools.lru_cache(maxsize=4)
def _script_directory(location: str) -> ScriptDirectory:
    """The parsed revision scripts at ``location`` (cached: they never change at runtime)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(location=location))


class _SchemaState(NamedTuple):
    current: str | None
    head: str
    known: frozenset[str]
    tables: frozenset[str]  # tables other than alembic_version

    @property
    def fresh(self) -> bool:
        return self.current is None and not self.tables


def _schema_state(engine: Engine) -> _SchemaState:
    """Read the database's revision and tables and the code's head revision."""
    from alembic.runtime.migration import MigrationContext

    script = _script_directory(str(ALEMBIC_DIR))
    head = script.get_current_head()
    if head is None:
        raise DatabaseSchemaError("no migration scripts found in " + str(ALEMBIC_DIR))
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
        tables = frozenset(sa.inspect(conn).get_table_names()) - {"alembic_version"}
    known = frozenset(s.revision for s in script.walk_revisions())
    return _SchemaState(current, head, known, tables)


def _check_upgradable(state: _SchemaState) -> None:
    """Raise :class:`DatabaseSchemaError` unless migrations can bring the DB to head."""
    if state.current is None and state.tables:
        raise DatabaseSchemaError(
            "database is not empty but has no phoebe-spawner schema version (tables: "
            f"{', '.join(sorted(state.tables))}); point the hub at an empty database "
            "or at one created by phoebe-spawner"
        )
    if state.current is not None and state.current not in state.known:
        raise DatabaseSchemaError(
            f"database schema revision {state.current!r} is unknown to this phoebe-spawner "
            f"(newest known: {state.head!r}); it was probably written by a newer version: "
            "upgrade phoebe-spawner or restore a backup of the database"
        )


def schema_status(engine: Engine) -> tuple[str | None, str]:
    """Return ``(database revision or None, code head revision)``; for the CLI and tests."""
    state = _schema_state(engine)
    return state.current, state.head


def _backup_sqlite(engine: Engine) -> Path | None:
    """Copy a SQLite file DB to ``<file>.<timestamp>.bak`` (online backup API, WAL-safe)."""
    src_path = sqlite_file(engine.url) if engine.dialect.name == "sqlite" else None
    if src_path is None:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    bak = src_path.with_name(f"{src_path.name}.{stamp}.bak")
    n = 1
    while bak.exists():
        bak = src_path.with_name(f"{src_path.name}.{stamp}-{n}.bak")
        n += 1
    with engine.connect() as conn:
        src = conn.connection.driver_connection
        dst = sqlite3.connect(bak)
        try:
            src.backup(dst)  # type: ignore[union-attr]
        finally:
            dst.close()
    log.info("backed up the database to %s before migrating", bak)
    return bak


def _run_upgrade(engine: Engine) -> None:
    """Run ``alembic upgrade head`` on one connection of ``engine``.

    On SQLite, foreign keys are switched off meanwhile: batch migrations recreate
    tables, and dropping a parent table would otherwise cascade-delete child rows.
    """
    from alembic import command

    is_sqlite = engine.dialect.name == "sqlite"
    with _ALEMBIC_LOCK, engine.connect() as conn:
        if is_sqlite:
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            with conn.begin():
                command.upgrade(_alembic_config(conn), "head")
                if is_sqlite and conn.exec_driver_sql("PRAGMA foreign_key_check").first():
                    raise DatabaseSchemaError(
                        "migration left dangling foreign keys; restore the backup"
                    )
        finally:
            if is_sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()


def upgrade_schema(engine: Engine, *, backup: bool = True) -> str:
    """Migrate the database to the head revision and return that revision.

    Called by ``Store.init(upgrade=True)`` (the ``phoebe-spawner upgrade-db``
    subcommand, or the hub with ``--upgrade-db``) and by tests.
    A non-fresh SQLite file is first backed up to ``<file>.<timestamp>.bak`` when
    ``backup`` is true.  Raises :class:`DatabaseSchemaError` for a non-empty
    unversioned DB or one from a newer phoebe-spawner.
    """
    state = _schema_state(engine)
    _check_upgradable(state)
    if state.current == state.head:
        return state.head
    if backup and not state.fresh:
        _backup_sqlite(engine)
    log.info("migrating database schema %s -> %s", state.current or "(empty)", state.head)
    _run_upgrade(engine)
    current, _ = schema_status(engine)
    if current != state.head:
        raise DatabaseSchemaError(f"migration ended at {current!r}, expected {state.head!r}")
    return current


def prepare_schema(engine: Engine, upgrade: bool) -> str:
    """Bring a fresh DB to head, accept one at head, else upgrade or raise (``Store.init``)."""
    state = _schema_state(engine)
    if state.current == state.head:
        return state.head
    _check_upgradable(state)
    if state.fresh:
        return upgrade_schema(engine, backup=False)
    if not upgrade:
        raise DatabaseSchemaError(
            f"database schema is at revision {state.current!r} but this phoebe-spawner "
            f"needs {state.head!r}; back up the database and {_UPGRADE_HINT}"
        )
    return upgrade_schema(engine, backup=True)
