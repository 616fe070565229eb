"""Tests of the job tables and queries (phoebe_spawner.store.jobs via Store, migration 0002).

Everything runs against real SQLite files in ``tmp_path``, like ``test_store.py``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
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
from .test_store import MIGRATION_TEST


@pytest.fixture
async def store(make_store: StoreFactory) -> Store:
    s = await make_store()
    await s.create_session(id="s1", user_id="1")
    await s.create_session(id="s2", user_id="1")
    await s.create_session(id="s3", user_id="2")
    return s


async def new_job(store: Store, jid: str = "j1", sid: str = "s1", **kw: Any) -> None:
    args: dict[str, Any] = {
        "session_id": sid,
        "user_id": "2" if sid == "s3" else "1",
        "command": "run_compute",
        "request": b'{"compute": "preview"}',
        "created_at": 100.0,
    }
    await store.create_job(id=jid, **(args | kw))


async def job(store: Store, jid: str, *, with_result: bool = False) -> dict[str, Any]:
    found = await store.get_job(jid, with_result=with_result)
    assert found is not None
    return found


def event(store: Store, jid: str, seq: int, type: str = "log") -> None:
    body = f'{{"n": {seq}}}'.encode()
    store.log_job_event(job_id=jid, seq=seq, ts=1000.0 + seq, type=type, data=body)


# --------------------------------------------------------------------------- jobs


async def test_create_update_get(store: Store) -> None:
    await new_job(store)
    row = await job(store, "j1")
    assert row["status"] == "queued"
    assert row["last_event_id"] == 0
    assert (row["command"], row["user_id"], row["session_id"]) == ("run_compute", "1", "s1")
    assert row["started_at"] is None and row["result_size"] is None
    assert "request" not in row and "result" not in row
    assert await store.get_job_request("j1") == b'{"compute": "preview"}'
    assert await store.get_job_request("nope") is None

    await store.update_job(
        "j1", status="running", started_at=101.0, progress=0.5, message="m" * 600
    )
    row = await job(store, "j1", with_result=True)
    assert (row["status"], row["started_at"], row["progress"]) == ("running", 101.0, 0.5)
    assert len(row["message"]) == 512
    assert row["result"] is None

    await store.update_job(
        "j1", status="succeeded", finished_at=102.0, result=b'{"success": true}', error="e" * 3000
    )
    row = await job(store, "j1", with_result=True)
    assert row["result"] == b'{"success": true}'
    assert row["result_size"] == len(b'{"success": true}')
    assert len(row["error"]) == 2000
    await store.update_job("j1", result=None)
    assert (await job(store, "j1"))["result_size"] is None
    await store.update_job("j1")  # no fields: only checks existence

    with pytest.raises(KeyError):
        await store.update_job("nope", status="failed")
    with pytest.raises(KeyError):
        await store.update_job("nope")
    with pytest.raises(TypeError, match="bogus"):
        await store.update_job("j1", bogus=1)
    with pytest.raises(TypeError, match="id"):
        await store.update_job("j1", id="j2")
    with pytest.raises(ValueError, match="status"):
        await store.update_job("j1", status="done")
    with pytest.raises(ValueError, match="j1"):
        await new_job(store, "j1")  # duplicate id
    with pytest.raises(ValueError, match="j9"):
        await new_job(store, "j9", sid="ghost")  # unknown session
    with pytest.raises(ValueError, match="status"):
        await new_job(store, "j9", status="bogus")
    assert await store.get_job("nope") is None


async def test_large_result_round_trips(store: Store) -> None:
    big = os.urandom(20 * 1024 * 1024)
    await new_job(store, request=big[:1_000_000])
    await store.update_job("j1", status="succeeded", result=big)
    row = await job(store, "j1", with_result=True)
    assert row["result"] == big
    assert row["result_size"] == len(big)
    assert "result" not in await job(store, "j1")
    assert await store.get_job_request("j1") == big[:1_000_000]
    rows, _ = await store.list_jobs(user_id="1")
    assert "result" not in rows[0] and "request" not in rows[0]


async def test_list_jobs_filters_and_pages(store: Store) -> None:
    specs = [
        ("a", "s1", "succeeded"),
        ("b", "s2", "running"),
        ("c", "s1", "failed"),
        ("d", "s3", "running"),  # user 2
        ("e", "s1", "queued"),
    ]
    for i, (jid, sid, status) in enumerate(specs):
        await new_job(store, jid, sid=sid, status=status, created_at=100.0 + i)

    async def ids(**kw: Any) -> tuple[list[str], int]:
        rows, total = await store.list_jobs(**kw)
        return [r["id"] for r in rows], total

    assert await ids(user_id="1") == (["e", "c", "b", "a"], 4)
    assert await ids(user_id="2") == (["d"], 1)
    assert await ids(user_id="3") == ([], 0)
    assert await ids(user_id="1", session_id="s1") == (["e", "c", "a"], 3)
    assert await ids(user_id="1", session_id="s3") == ([], 0)  # another user's session
    assert await ids(user_id="1", statuses={"running", "queued"}) == (["e", "b"], 2)
    assert await ids(user_id="1", statuses=[]) == ([], 0)
    assert await ids(user_id="1", limit=2) == (["e", "c"], 4)
    assert await ids(user_id="1", limit=2, offset=2) == (["b", "a"], 4)
    assert await ids(user_id="1", limit=2, offset=4) == ([], 4)
    assert await ids(user_id="1", session_id="s1", statuses=["failed", "queued"], limit=1) == (
        ["e"],
        2,
    )
    rows, _ = await store.list_jobs(user_id="1", limit=1)
    assert rows[0]["created_at"] == 104.0 and rows[0]["status"] == "queued"
    with pytest.raises(ValueError, match="limit"):
        await store.list_jobs(user_id="1", limit=-1)


async def test_fail_unfinished_jobs(store: Store) -> None:
    specs = [("a", "s1", "running"), ("b", "s1", "succeeded"), ("c", "s3", "queued")]
    specs += [("d", "s2", "running"), ("e", "s1", "cancelled")]
    for i, (jid, sid, status) in enumerate(specs):
        await new_job(store, jid, sid=sid, status=status, created_at=100.0 + i)
    assert await store.fail_unfinished_jobs("gone", now=500.0, session_id="s2") == ["d"]
    assert await store.fail_unfinished_jobs("hub restarted", now=600.0) == ["a", "c"]
    assert await store.fail_unfinished_jobs("again", now=700.0) == []
    for jid in "ac":
        row = await job(store, jid)
        assert (row["status"], row["error"], row["finished_at"]) == (
            "failed",
            "hub restarted",
            600.0,
        )
    assert (await job(store, "d"))["error"] == "gone"
    assert (await job(store, "b"))["status"] == "succeeded"
    assert (await job(store, "e"))["finished_at"] is None


async def test_purge_jobs(store: Store) -> None:
    await new_job(store, "old")
    await new_job(store, "new")
    await new_job(store, "live")
    await store.update_job("old", status="succeeded", finished_at=10.0, result=b"x")
    await store.update_job("new", status="failed", finished_at=30.0)
    await store.update_job("live", status="running")
    event(store, "old", 1)
    await store.flush_job_events()
    assert await store.purge_jobs(finished_before=20.0) == 1
    assert await store.get_job("old") is None
    assert await store.get_job_events("old") == []
    assert await store.purge_jobs(finished_before=1e12) == 1
    assert await store.get_job("live") is not None


# ------------------------------------------------------------------------- events


async def test_events_are_buffered_until_flush(store: Store) -> None:
    await new_job(store)
    for seq in (1, 2, 3):
        event(store, "j1", seq, type="progress" if seq < 3 else "x" * 40)
    assert store.pending_job_events == 3
    assert await store.get_job_events("j1") == []
    assert (await job(store, "j1"))["last_event_id"] == 0

    await store.flush_job_events()
    assert store.pending_job_events == 0
    events = await store.get_job_events("j1")
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert events[0] == {"seq": 1, "ts": 1001.0, "type": "progress", "data": b'{"n": 1}'}
    assert events[2]["type"] == "x" * 32
    assert (await job(store, "j1"))["last_event_id"] == 3
    assert [e["seq"] for e in await store.get_job_events("j1", after=1)] == [2, 3]
    assert [e["seq"] for e in await store.get_job_events("j1", after=1, limit=1)] == [2]
    assert await store.get_job_events("j1", after=3) == []
    assert await store.get_job_events("nope") == []


async def test_terminal_update_after_flush_sees_full_history(store: Store) -> None:
    """The job manager's ordering: terminal event, flush, then the terminal status."""
    await new_job(store)
    await store.update_job("j1", status="running")
    for seq in range(1, 6):
        event(store, "j1", seq)
    event(store, "j1", 6, type="finished")
    await store.flush_job_events()
    await store.update_job("j1", status="succeeded", finished_at=1.0, result=b"{}")
    row = await job(store, "j1")
    assert row["status"] == "succeeded"
    events = await store.get_job_events("j1")
    assert len(events) == row["last_event_id"] == 6
    assert events[-1]["type"] == "finished"


async def test_events_of_several_jobs_and_skips(store: Store) -> None:
    await new_job(store, "j1")
    await new_job(store, "j2", sid="s3")
    for seq in (1, 2):
        event(store, "j1", seq)
        event(store, "j2", seq)
    event(store, "ghost", 1)  # unknown job
    event(store, "j1", 2)  # duplicate in the same batch
    await store.flush_job_events()
    assert store.job_events_dropped == 2
    event(store, "j1", 1)  # already stored
    event(store, "j1", 5)
    event(store, "j1", 4)  # out of order but new: stored, last_event_id stays 5
    await store.flush_job_events()
    assert store.job_events_dropped == 3
    assert [e["seq"] for e in await store.get_job_events("j1")] == [1, 2, 4, 5]
    assert [e["seq"] for e in await store.get_job_events("j2")] == [1, 2]
    assert (await job(store, "j1"))["last_event_id"] == 5
    assert (await job(store, "j2"))["last_event_id"] == 2


async def test_event_flush_by_batch_size(make_store: StoreFactory) -> None:
    store = await make_store(command_batch_max=5)
    await store.create_session(id="s1", user_id="1")
    await new_job(store)
    for seq in range(1, 5):
        event(store, "j1", seq)
    await asyncio.sleep(0.05)
    assert store.pending_job_events == 4
    event(store, "j1", 5)
    await async_wait_for(lambda: store.pending_job_events == 0, "the full batch to be flushed")
    await async_wait_for(lambda: not store._job_events.buffer.busy, "the event flusher to go idle")
    assert len(await store.get_job_events("j1")) == 5
    assert store.pending_commands == 0  # the command buffer is separate


async def test_event_buffer_is_bounded_and_retried_in_outage(
    make_store: StoreFactory, db_path: Path
) -> None:
    store = await make_store(command_batch_max=2, sqlite_busy_timeout_ms=20)
    await store.create_session(id="s1", user_id="1")
    await new_job(store)
    con = sqlite3.connect(db_path, isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    try:
        for seq in range(1, 26):
            event(store, "j1", seq)
        await async_wait_for(lambda: not store._job_events.buffer.busy, "the failed flushes to end")
        with pytest.raises(DatabaseUnavailable, match="locked"):
            await store.flush_job_events()
        assert store.pending_job_events == 20
        assert store.job_events_dropped == 5
    finally:
        con.execute("COMMIT")
        con.close()
    await store.flush_job_events()
    assert [e["seq"] for e in await store.get_job_events("j1")] == list(range(6, 26))
    assert (await job(store, "j1"))["last_event_id"] == 25


async def test_events_survive_close(url: str, make_store: StoreFactory) -> None:
    store = Store(url, command_flush_interval=60)
    await store.init()
    await store.create_session(id="s1", user_id="1")
    await new_job(store)
    for seq in (1, 2, 3):
        event(store, "j1", seq)
    await store.close()  # flushes the buffer
    event(store, "j1", 4)
    assert store.job_events_dropped == 1

    reopened = await make_store()
    assert [e["seq"] for e in await reopened.get_job_events("j1")] == [1, 2, 3]
    assert (await job(reopened, "j1"))["last_event_id"] == 3


async def test_deleting_a_session_cascades(store: Store, db_path: Path) -> None:
    await new_job(store, "j1")
    await new_job(store, "j2", sid="s2")
    event(store, "j1", 1)
    event(store, "j2", 1)
    await store.flush_job_events()
    with store.engine.begin() as conn:  # the engine's connections enforce foreign keys
        conn.exec_driver_sql("DELETE FROM sessions WHERE id = 's1'")
    assert await store.get_job("j1") is None
    assert await store.get_job_events("j1") == []
    assert query(db_path, "SELECT job_id FROM job_events") == [("j2",)]


# ---------------------------------------------------------------------- migration


def test_migrations_match_models(url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        assert upgrade_schema(engine) == HEAD
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, Base.metadata) == []
            indexes = {i["name"] for i in sa.inspect(conn).get_indexes("jobs")}
    finally:
        engine.dispose()
    assert indexes == {"ix_jobs_session_id", "ix_jobs_status", "ix_jobs_user_id_created_at"}


def _migrate(url: str, action: str, revision: str) -> None:
    """Run ``alembic upgrade|downgrade <revision>`` on ``url`` with the hub's config."""
    from alembic import command

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            getattr(command, action)(schema._alembic_config(conn), revision)
    finally:
        engine.dispose()


async def test_upgrade_from_0001(url: str, db_path: Path, make_store: StoreFactory) -> None:
    _migrate(url, "upgrade", "0001")
    query(
        db_path,
        "INSERT INTO sessions (id, user_id, created_at, last_activity) VALUES ('old', 'u', 1, 1)",
    )
    engine = make_engine(url)
    try:
        assert schema_status(engine) == ("0001", HEAD)
    finally:
        engine.dispose()

    with pytest.raises(DatabaseSchemaError, match="upgrade-db"):
        await make_store()
    assert list(db_path.parent.glob("*.bak")) == []

    store = await make_store(upgrade=True)
    assert schema_status(store.engine) == (HEAD, HEAD)
    assert len(list(db_path.parent.glob("hub.sqlite.*.bak"))) == 1
    old = await store.get_session("old")
    assert old is not None and old["user_id"] == "u"
    await new_job(store, "j1", sid="old", user_id="u")
    event(store, "j1", 1)
    await store.flush_job_events()
    assert (await job(store, "j1"))["last_event_id"] == 1
    assert query(db_path, "PRAGMA foreign_key_check") == []


def test_downgrade_drops_job_tables(url: str, db_path: Path) -> None:
    _migrate(url, "upgrade", "head")
    _migrate(url, "downgrade", "0001")
    tables = {r[0] for r in query(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert "jobs" not in tables and "job_events" not in tables
    assert "sessions" in tables
    assert query(db_path, "SELECT version_num FROM alembic_version") == [("0001",)]


async def test_later_batch_migration_keeps_jobs(
    make_store: StoreFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A future migration that recreates `sessions` must not cascade-delete jobs/events."""
    old = await make_store()
    await old.create_session(id="s1", user_id="1")
    await new_job(old)
    event(old, "j1", 1)
    await old.close()

    copy = tmp_path / "alembic"
    shutil.copytree(schema.ALEMBIC_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "versions" / "0099_test.py").write_text(MIGRATION_TEST)
    monkeypatch.setattr(schema, "ALEMBIC_DIR", copy)
    new = await make_store(upgrade=True)
    assert schema_status(new.engine) == ("0099", "0099")
    assert (await job(new, "j1"))["last_event_id"] == 1
    assert len(await new.get_job_events("j1")) == 1
