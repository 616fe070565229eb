"""Tests of the database layer (phoebe_spawner.store: facade, schema, orm, alembic migrations).

Everything runs against real SQLite files in ``tmp_path``.  Locks are taken with a
second plain ``sqlite3`` connection (``BEGIN EXCLUSIVE``), which is what another
process holding the database would look like.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from phoebe_spawner.store import (
    DatabaseSchemaError,
    DatabaseUnavailable,
    Store,
    make_engine,
    schema,
    schema_status,
    upgrade_schema,
)
from phoebe_spawner.store.orm import Base

from ...waiting import async_wait_for
from .conftest import HEAD, StoreFactory, query

MIGRATION_TEST = '''"""Test-only revision: recreates `sessions` (batch) and adds a column."""
import sqlalchemy as sa
from alembic import op

revision = "0099"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("sessions", recreate="always") as batch:
        batch.add_column(sa.Column("test_col", sa.String(32), nullable=True))


def downgrade():
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("test_col")
'''


class ExclusiveLock:
    """Hold ``BEGIN EXCLUSIVE`` on a SQLite file from another connection until released."""

    def __init__(self, path: Path) -> None:
        self.con = sqlite3.connect(path, isolation_level=None)
        self.con.execute("BEGIN EXCLUSIVE")
        self.held = True

    def release(self) -> None:
        if self.held:
            self.con.execute("COMMIT")
            self.con.close()
            self.held = False


@pytest.fixture
def lock(db_path: Path) -> Iterator[Callable[[], ExclusiveLock]]:
    locks: list[ExclusiveLock] = []

    def take() -> ExclusiveLock:
        locks.append(ExclusiveLock(db_path))
        return locks[-1]

    yield take
    for held in locks:
        held.release()


async def row(result: Awaitable[dict[str, Any] | None]) -> dict[str, Any]:
    """Await a store lookup that must find its row."""
    found = await result
    assert found is not None
    return found


async def new_session(store: Store, sid: str = "s1", **fields: Any) -> None:
    fields.setdefault("user_id", "1")
    fields.setdefault("user_name", "ada")
    await store.create_session(id=sid, **fields)


def log(store: Store, sid: str = "s1", command: str = "run_compute", **kw: Any) -> None:
    args: dict[str, Any] = {
        "session_id": sid,
        "user_id": "1",
        "command": command,
        "started_at": time.time(),
        "duration_ms": 1.5,
        "success": True,
        "error": None,
    }
    store.log_command(**(args | kw))


# ------------------------------------------------------------------------ schema


async def test_fresh_init_creates_schema_at_head(store: Store, db_path: Path) -> None:
    assert db_path.exists()  # parent directory was created
    assert schema_status(store.engine) == (HEAD, HEAD)
    tables = {r[0] for r in query(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"users", "sessions", "session_metrics", "session_commands"} <= tables
    assert list(db_path.parent.glob("*.bak")) == []
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    assert await store.ping()


async def test_init_twice_and_second_store(store: Store, make_store: StoreFactory) -> None:
    await store.init()
    await new_session(store)
    other = await make_store()
    assert (await other.get_session("s1")) is not None


def test_migrations_match_models(url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        assert upgrade_schema(engine) == HEAD
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, Base.metadata) == []
    finally:
        engine.dispose()


@pytest.fixture
def alembic_with_test_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Returns a switch that makes the code's head a test revision 0099 (after 0003)."""
    copy = tmp_path / "alembic"
    shutil.copytree(schema.ALEMBIC_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "versions" / "0099_test.py").write_text(MIGRATION_TEST)
    return lambda: monkeypatch.setattr(schema, "ALEMBIC_DIR", copy)


async def test_older_schema_needs_upgrade(
    make_store: StoreFactory, db_path: Path, alembic_with_test_head: Callable[[], None]
) -> None:
    old = await make_store(metrics_keep=10)
    await new_session(old)
    await old.record_metric("s1", 1.0, 100.0)
    log(old)
    await old.close()

    alembic_with_test_head()
    with pytest.raises(DatabaseSchemaError, match="upgrade-db"):
        await make_store()
    assert list(db_path.parent.glob("*.bak")) == []

    new = await make_store(upgrade=True)
    assert schema_status(new.engine) == ("0099", "0099")
    backups = list(db_path.parent.glob("hub.sqlite.*.bak"))
    assert len(backups) == 1
    assert query(backups[0], "SELECT version_num FROM alembic_version") == [(HEAD,)]
    # the batch migration recreated `sessions`; child rows must not have cascaded away
    assert (await row(new.get_session("s1")))["command_count"] == 1
    assert len(await new.get_metrics("s1")) == 1
    assert len(await new.list_commands("s1")) == 1
    assert query(db_path, "PRAGMA foreign_key_check") == []
    with new.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


async def test_newer_schema_is_refused(make_store: StoreFactory, store: Store, url: str) -> None:
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(DatabaseSchemaError, match="newer"):
        await make_store(upgrade=True)
    engine = make_engine(url)
    with pytest.raises(DatabaseSchemaError, match="newer"):
        upgrade_schema(engine)
    engine.dispose()


async def test_unversioned_nonempty_db_is_refused(make_store: StoreFactory, db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    query(db_path, "CREATE TABLE hub_stuff (x INTEGER)")
    with pytest.raises(DatabaseSchemaError, match="hub_stuff"):
        await make_store(upgrade=True)


def test_upgrade_schema_on_fresh_db_has_no_backup(url: str, db_path: Path) -> None:
    engine = make_engine(url)
    try:
        assert schema_status(engine) == (None, HEAD)
        assert upgrade_schema(engine) == HEAD
        assert upgrade_schema(engine) == HEAD  # idempotent
    finally:
        engine.dispose()
    assert list(db_path.parent.glob("*.bak")) == []


def test_make_engine_postgres_url() -> None:
    pytest.importorskip("psycopg")
    engine = make_engine("postgresql://u:secret@127.0.0.1:1/db")
    assert engine.url.drivername == "postgresql+psycopg"
    assert engine.pool._pre_ping
    engine.dispose()


# ------------------------------------------------------------------------- users


async def test_users(store: Store) -> None:
    ada = await store.create_user(
        name="ada@example.org", email="ada@example.org", password_hash="h1", first_name="Ada"
    )
    assert ada is not None
    assert ada["role"] == "user"
    assert ada["admin"] is False
    assert ada["is_active"] is True
    assert ada["last_name"] == ""
    assert await store.create_user(name="ada@example.org", email=None, password_hash=None) is None
    assert (await row(store.get_user_by_name("ada@example.org")))["id"] == ada["id"]
    assert (await row(store.get_user_by_id(ada["id"])))["name"] == "ada@example.org"
    assert await store.get_user_by_name("nobody") is None
    assert await store.get_user_by_id(9999) is None

    assert await store.set_user_active("ada@example.org", False)
    assert (await row(store.get_user_by_name("ada@example.org")))["is_active"] is False
    assert await store.set_user_password("ada@example.org", "h2")
    assert (await row(store.get_user_by_name("ada@example.org")))["password_hash"] == "h2"
    assert not await store.set_user_active("nobody", True)
    assert not await store.set_user_password("nobody", "x")


async def test_ensure_user(store: Store) -> None:
    first = await store.ensure_user(name="sub-123", email="b@x.org", full_name="Bob van Dam")
    assert (first["first_name"], first["last_name"]) == ("Bob", "van Dam")
    assert first["last_seen"] is not None
    again = await store.ensure_user(name="sub-123", role="staff", admin=True)
    assert again["id"] == first["id"]
    assert again["email"] == "b@x.org"  # not overwritten by None
    assert again["first_name"] == "Bob"
    assert (again["role"], again["admin"]) == ("staff", True)
    assert again["last_seen"] >= first["last_seen"]
    await store.set_user_active("sub-123", False)
    assert (await store.ensure_user(name="sub-123"))["is_active"] is False


# ---------------------------------------------------------------------- sessions


async def test_sessions_crud(store: Store) -> None:
    await new_session(store, "s1", spawner_class="LocalProcessSpawner", meta={"k": [1, 2]})
    sess = await row(store.get_session("s1"))
    assert sess["status"] == "pending"
    assert sess["meta"] == {"k": [1, 2]}
    assert sess["spawner_state"] == {}
    assert sess["command_count"] == 0
    assert sess["last_activity"] == sess["created_at"]

    await store.update_session(
        "s1", status="running", port=5555, spawner_state={"pid": 42}, user_agent="x" * 600
    )
    sess = await row(store.get_session("s1"))
    assert (sess["status"], sess["port"], sess["spawner_state"]) == ("running", 5555, {"pid": 42})
    assert len(sess["user_agent"]) == 512
    await store.update_session("s1")  # no fields: only checks existence

    with pytest.raises(KeyError):
        await store.update_session("nope", status="stopped")
    with pytest.raises(KeyError):
        await store.update_session("nope")
    with pytest.raises(TypeError):
        await store.update_session("s1", bogus=1)
    with pytest.raises(ValueError, match="s1"):
        await new_session(store, "s1")
    assert await store.get_session("nope") is None


async def test_list_sessions(store: Store) -> None:
    for i, (user, status) in enumerate([("1", "running"), ("2", "stopped"), ("1", "failed")]):
        await new_session(store, f"s{i}", user_id=user, status=status, created_at=100.0 + i)
    assert [s["id"] for s in await store.list_sessions()] == ["s2", "s1", "s0"]
    assert [s["id"] for s in await store.list_sessions(user_id="1")] == ["s2", "s0"]
    assert [s["id"] for s in await store.list_sessions(statuses={"running", "stopped"})] == [
        "s1",
        "s0",
    ]
    assert [s["id"] for s in await store.list_sessions(user_id="1", limit=1)] == ["s2"]
    assert await store.list_sessions(statuses=[]) == []


# ----------------------------------------------------------------------- metrics


async def test_metrics_are_trimmed(make_store: StoreFactory, db_path: Path) -> None:
    store = await make_store(metrics_keep=5)
    await new_session(store, "s1")
    await new_session(store, "s2")
    for i in range(12):
        await store.record_metric("s1", float(i), 10.0 * i, cpu_percent=1.0)
    await store.record_metric("s2", 0.0, 1.0)
    rows = await store.get_metrics("s1")
    assert [r["ts"] for r in rows] == [7.0, 8.0, 9.0, 10.0, 11.0]
    assert [r["ts"] for r in await store.get_metrics("s1", limit=2)] == [10.0, 11.0]
    assert query(db_path, "SELECT COUNT(*) FROM session_metrics WHERE session_id='s1'") == [(5,)]
    assert len(await store.get_metrics("s2")) == 1
    with pytest.raises(KeyError):
        await store.record_metric("nope", 0.0, 1.0)


async def test_a_round_of_metrics_is_one_write_that_trims_and_skips_unknown_sessions(
    make_store: StoreFactory, db_path: Path
) -> None:
    store = await make_store(metrics_keep=3)
    await new_session(store, "s1")
    await new_session(store, "s2")
    for i in range(3):
        await store.record_metric("s1", float(i), 1.0)
    skipped = await store.record_metrics(
        [("s1", 10.0, 5.0), ("nope", 10.0, 1.0), ("s2", 10.0, 7.0)]
    )
    assert skipped == 1
    assert [(r["ts"], r["mem_used"]) for r in await store.get_metrics("s1")] == [
        (1.0, 1.0),
        (2.0, 1.0),
        (10.0, 5.0),
    ]
    assert [(r["ts"], r["mem_used"]) for r in await store.get_metrics("s2")] == [(10.0, 7.0)]
    assert query(db_path, "SELECT COUNT(*) FROM session_metrics WHERE session_id='nope'") == [(0,)]


# ------------------------------------------------------------------- command log


async def test_log_command_is_buffered_until_flush(store: Store) -> None:
    await new_session(store)
    log(store, error="e" * 2000, success=False)
    log(store, command="c" * 100)
    assert store.pending_commands == 2
    assert await store.list_commands("s1") == []
    await store.flush_commands()
    rows = await store.list_commands("s1")
    assert [r["command"] for r in rows] == ["run_compute", "c" * 64]
    assert len(rows[0]["error"]) == 1000
    assert rows[0]["success"] is False
    assert (await row(store.get_session("s1")))["command_count"] == 2
    assert store.pending_commands == 0


async def test_batch_flush_by_size(make_store: StoreFactory) -> None:
    store = await make_store(command_batch_max=5)
    await new_session(store)
    for _ in range(4):
        log(store)
    await asyncio.sleep(0.05)
    assert store.pending_commands == 4
    log(store)
    await async_wait_for(lambda: store.pending_commands == 0, "the full batch to be flushed")
    await async_wait_for(lambda: not store._commands.buffer.busy, "the command flusher to go idle")
    assert len(await store.list_commands("s1")) == 5
    assert (await row(store.get_session("s1")))["command_count"] == 5


async def test_unknown_session_rows_are_dropped(store: Store) -> None:
    await new_session(store)
    log(store, sid="ghost")
    log(store)
    await store.flush_commands()
    assert len(await store.list_commands("s1")) == 1
    assert store.commands_dropped == 1


async def test_flusher_retries_after_outage(
    make_store: StoreFactory, lock: Callable[[], ExclusiveLock]
) -> None:
    store = await make_store(command_flush_interval=0.05, sqlite_busy_timeout_ms=50)
    await new_session(store)
    held = lock()
    for _ in range(3):
        log(store)
    with pytest.raises(DatabaseUnavailable, match="locked"):
        await store.flush_commands()
    # the explicit flush above failed once; let the flusher fail twice more on its own
    await async_wait_for(lambda: store._commands.buffer._failures >= 3, "failed flusher ticks")
    assert store.pending_commands == 3
    assert await store.list_commands("s1") == []  # WAL: reads still work
    held.release()
    await async_wait_for(lambda: store.pending_commands == 0, "the flusher to retry and succeed")
    await async_wait_for(lambda: not store._commands.buffer.busy, "the command flusher to go idle")
    assert len(await store.list_commands("s1")) == 3
    assert (await row(store.get_session("s1")))["command_count"] == 3
    assert store.commands_dropped == 0


async def test_buffer_is_bounded_during_outage(
    make_store: StoreFactory, lock: Callable[[], ExclusiveLock]
) -> None:
    store = await make_store(command_batch_max=2, sqlite_busy_timeout_ms=20)
    await new_session(store)
    held = lock()
    for i in range(25):
        log(store, command=f"c{i}")
    await async_wait_for(lambda: not store._commands.buffer.busy, "the failed flushes to end")
    assert store.pending_commands == 20
    assert store.commands_dropped == 5
    held.release()
    await store.flush_commands()
    rows = await store.list_commands("s1")
    assert [r["command"] for r in rows] == [f"c{i}" for i in range(5, 25)]


async def test_locked_db_raises_unavailable_within_busy_timeout(
    make_store: StoreFactory, lock: Callable[[], ExclusiveLock]
) -> None:
    store = await make_store(sqlite_busy_timeout_ms=100)
    await new_session(store)
    lock()  # never released: the update gives up after its busy timeout (that it waits
    # for the lock meanwhile is test_event_loop_keeps_running_while_db_locked's)
    with pytest.raises(DatabaseUnavailable, match="locked") as info:
        await store.update_session("s1", status="running")
    assert "sqlite:" not in str(info.value)


async def test_event_loop_keeps_running_while_db_locked(
    make_store: StoreFactory, lock: Callable[[], ExclusiveLock]
) -> None:
    store = await make_store(sqlite_busy_timeout_ms=5000)
    await new_session(store)
    held = lock()
    update = asyncio.create_task(store.update_session("s1", status="running"))
    pending_ticks = 0

    async def ticker() -> None:
        """Another task: counts its turns while the update is still waiting."""
        nonlocal pending_ticks
        while not update.done():
            pending_ticks += 1
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    # a store that blocked the loop would hold it for the whole busy timeout (5 s) and
    # then fail the update: the ticker would see it done after a turn or two
    await async_wait_for(lambda: pending_ticks >= 30, "30 turns of a task beside the update")
    assert not update.done()
    held.release()
    await asyncio.wait_for(update, 5)
    await asyncio.wait_for(ticking, 5)
    assert (await row(store.get_session("s1")))["status"] == "running"


async def test_close_flushes_and_is_final(url: str, make_store: StoreFactory) -> None:
    store = Store(url, command_flush_interval=60)
    await store.init()
    await new_session(store)
    log(store)
    await store.close()
    await store.close()  # idempotent
    assert not await store.ping()
    with pytest.raises(DatabaseUnavailable, match="closed"):
        await store.get_session("s1")
    log(store)
    assert store.commands_dropped == 1

    reopened = await make_store()
    assert len(await reopened.list_commands("s1")) == 1
    assert (await row(reopened.get_session("s1")))["command_count"] == 1


async def test_use_before_init_is_an_error(url: str) -> None:
    store = Store(url)
    with pytest.raises(RuntimeError, match="init"):
        await store.get_session("x")
    await store.close()


def test_sqlite_memory_url() -> None:
    engine = make_engine("sqlite://")
    try:
        assert upgrade_schema(engine) == HEAD
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM users")).scalar() == 0
    finally:
        engine.dispose()
