"""Tests of the checkpoint table and queries (phoebe_spawner.store.checkpoints via Store, 0003).

Everything runs against real SQLite files in ``tmp_path``, like ``test_store.py``.
"""

from __future__ import annotations

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
from phoebe_spawner.store.orm import CHECKPOINT_REASONS

from .conftest import HEAD, StoreFactory, query
from .test_store import ExclusiveLock

SHA = "ab" * 32


async def new_ckpt(
    store: Store, cid: str, *, user: str = "1", sid: str | None = "s1", at: float = 100.0, **kw: Any
) -> dict[str, Any]:
    args: dict[str, Any] = {
        "user_id": user,
        "session_id": sid,
        "created_at": at,
        "reason": "manual",
        "path": f"checkpoints/{user}/{cid}.json",
        "size": 1000,
        "sha256": SHA,
    }
    return await store.create_checkpoint(id=cid, **(args | kw))


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in rows]


def _migrate(url: str, action: str, revision: str) -> None:
    """Run ``alembic upgrade|downgrade <revision>`` on ``url`` with the hub's config."""
    from alembic import command

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            getattr(command, action)(schema._alembic_config(conn), revision)
    finally:
        engine.dispose()


# -------------------------------------------------------------------- create/get


async def test_create_and_get(store: Store) -> None:
    row = await new_ckpt(store, "c1", name="before fit", project_name="eclipsing", size=12345)
    assert row == {
        "id": "c1",
        "user_id": "1",
        "session_id": "s1",
        "created_at": 100.0,
        "reason": "manual",
        "name": "before fit",
        "project_name": "eclipsing",
        "path": "checkpoints/1/c1.json",
        "size": 12345,
        "sha256": SHA,
    }
    assert await store.get_checkpoint("c1") == row
    assert await store.get_checkpoint("nope") is None

    bare = await new_ckpt(store, "c2", sid=None, reason="cull")
    assert (bare["session_id"], bare["name"], bare["project_name"]) == (None, None, None)
    assert await store.get_checkpoint("c2") == bare
    for reason in CHECKPOINT_REASONS:
        await new_ckpt(store, f"r-{reason}", reason=reason)


async def test_create_cuts_labels_and_rejects_bad_values(store: Store) -> None:
    row = await new_ckpt(store, "c1", name="n" * 300, project_name="p" * 300)
    assert (len(row["name"]), len(row["project_name"])) == (255, 255)
    stored = await store.get_checkpoint("c1")
    assert stored is not None and stored["name"] == "n" * 255

    with pytest.raises(ValueError, match="c1"):
        await new_ckpt(store, "c1")  # duplicate id
    with pytest.raises(ValueError, match="reason"):
        await new_ckpt(store, "c2", reason="whim")
    bad: list[dict[str, Any]] = [
        {"path": "x" * 1025},
        {"path": ""},
        {"sha256": "a" * 65},
        {"sid": "s" * 65},
        {"user": ""},
        {"size": -1},
        {"size": 1.5},
    ]
    for kw in bad:
        with pytest.raises(ValueError, match="checkpoint"):
            await new_ckpt(store, "c2", **kw)
    with pytest.raises(ValueError, match="id"):
        await new_ckpt(store, "i" * 65)
    rows, total = await store.list_checkpoints(user_id="1")
    assert (ids(rows), total) == (["c1"], 1)


# -------------------------------------------------------------------------- list


async def test_list_order_pagination_filters(store: Store) -> None:
    await new_ckpt(store, "a", at=100.0)
    await new_ckpt(store, "b", at=300.0, sid="s2")
    await new_ckpt(store, "c", at=200.0)
    await new_ckpt(store, "d", at=200.0, sid=None)  # same created_at as "c": id breaks the tie
    await new_ckpt(store, "x", at=250.0, user="2", sid="s9")

    rows, total = await store.list_checkpoints(user_id="1")
    assert (ids(rows), total) == (["b", "d", "c", "a"], 4)
    assert rows[0]["path"] == "checkpoints/1/b.json"

    pages = [await store.list_checkpoints(user_id="1", limit=3, offset=o) for o in (0, 3, 6)]
    assert [ids(r) for r, _ in pages] == [["b", "d", "c"], ["a"], []]
    assert {t for _, t in pages} == {4}
    assert await store.list_checkpoints(user_id="1", limit=0) == ([], 4)

    assert await store.list_checkpoints(user_id="1", session_id="s1") == (
        [await store.get_checkpoint("c"), await store.get_checkpoint("a")],
        2,
    )
    rows, total = await store.list_checkpoints(user_id="1", session_id="s2")
    assert (ids(rows), total) == (["b"], 1)

    # users never see each other's checkpoints, even when filtering by a session id
    rows, total = await store.list_checkpoints(user_id="2")
    assert (ids(rows), total) == (["x"], 1)
    assert await store.list_checkpoints(user_id="2", session_id="s1") == ([], 0)
    assert await store.list_checkpoints(user_id="nobody") == ([], 0)

    with pytest.raises(ValueError, match=">= 0"):
        await store.list_checkpoints(user_id="1", limit=-1)
    with pytest.raises(ValueError, match=">= 0"):
        await store.list_checkpoints(user_id="1", offset=-1)


# ---------------------------------------------------------------- delete / usage


async def test_delete(store: Store) -> None:
    await new_ckpt(store, "c1")
    await new_ckpt(store, "c2")
    assert await store.delete_checkpoint("c1") is True
    assert await store.delete_checkpoint("c1") is False
    assert await store.delete_checkpoint("nope") is False
    assert await store.get_checkpoint("c1") is None
    assert await store.get_checkpoint("c2") is not None
    await new_ckpt(store, "c1")  # the id can be reused after deletion


async def test_usage(store: Store) -> None:
    assert await store.checkpoint_usage("1") == (0, 0)
    await new_ckpt(store, "a", size=100)
    await new_ckpt(store, "b", size=250, sid=None)
    await new_ckpt(store, "c", size=0)
    await new_ckpt(store, "x", size=7, user="2")
    big = 5 * 2**30  # sizes are 64-bit
    await new_ckpt(store, "y", size=big, user="3")
    assert await store.checkpoint_usage("1") == (3, 350)
    assert await store.checkpoint_usage("2") == (1, 7)
    assert await store.checkpoint_usage("3") == (1, big)
    await store.delete_checkpoint("b")
    assert await store.checkpoint_usage("1") == (2, 100)
    count, total = await store.checkpoint_usage("1")
    assert type(count) is int and type(total) is int


async def test_oldest(store: Store) -> None:
    await new_ckpt(store, "a", at=300.0)
    await new_ckpt(store, "b", at=100.0)
    await new_ckpt(store, "d", at=200.0)
    await new_ckpt(store, "c", at=200.0)
    await new_ckpt(store, "x", at=50.0, user="2")
    assert ids(await store.oldest_checkpoints("1", limit=10)) == ["b", "c", "d", "a"]
    oldest = await store.oldest_checkpoints("1", limit=2)
    assert ids(oldest) == ["b", "c"]
    assert oldest[0] == await store.get_checkpoint("b")
    assert await store.oldest_checkpoints("1", limit=0) == []
    assert ids(await store.oldest_checkpoints("2", limit=10)) == ["x"]
    assert await store.oldest_checkpoints("nobody", limit=10) == []
    with pytest.raises(ValueError, match=">= 0"):
        await store.oldest_checkpoints("1", limit=-1)


# ------------------------------------------------------------ sessions / outages


async def test_checkpoint_survives_its_session(store: Store, db_path: Path) -> None:
    await store.create_session(id="s1", user_id="1")
    await new_ckpt(store, "c1", sid="s1")
    await new_ckpt(store, "c2", sid="never-existed")  # session_id is not checked
    with store.engine.begin() as conn:  # the engine's connections enforce foreign keys
        conn.exec_driver_sql("DELETE FROM sessions WHERE id = 's1'")
    assert await store.get_session("s1") is None
    row = await store.get_checkpoint("c1")
    assert row is not None and row["session_id"] == "s1"
    rows, total = await store.list_checkpoints(user_id="1", session_id="s1")
    assert (ids(rows), total) == (["c1"], 1)
    assert query(db_path, "PRAGMA foreign_key_check") == []


async def test_locked_db_raises_unavailable(make_store: StoreFactory, db_path: Path) -> None:
    store = await make_store(sqlite_busy_timeout_ms=50)
    await new_ckpt(store, "c1")
    held = ExclusiveLock(db_path)
    try:
        with pytest.raises(DatabaseUnavailable, match="locked"):
            await new_ckpt(store, "c2")
        with pytest.raises(DatabaseUnavailable, match="locked"):
            await store.delete_checkpoint("c1")
    finally:
        held.release()
    assert await store.delete_checkpoint("c1") is True


# ---------------------------------------------------------------------- migration


def test_migration_creates_indexes_without_foreign_key(url: str) -> None:
    engine = make_engine(url)
    try:
        assert upgrade_schema(engine) == HEAD
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            indexes = {i["name"]: i["column_names"] for i in inspector.get_indexes("checkpoints")}
            foreign_keys = inspector.get_foreign_keys("checkpoints")
    finally:
        engine.dispose()
    assert indexes == {
        "ix_checkpoints_session_id": ["session_id"],
        "ix_checkpoints_user_id_created_at": ["user_id", "created_at"],
    }
    assert foreign_keys == []


async def test_upgrade_from_0002(url: str, db_path: Path, make_store: StoreFactory) -> None:
    _migrate(url, "upgrade", "0002")
    query(
        db_path,
        "INSERT INTO sessions (id, user_id, created_at, last_activity) VALUES ('old', 'u', 1, 1)",
    )
    query(
        db_path,
        "INSERT INTO jobs (id, session_id, user_id, command, request, created_at) "
        "VALUES ('j1', 'old', 'u', 'run_compute', x'7b7d', 2)",
    )
    engine = make_engine(url)
    try:
        assert schema_status(engine) == ("0002", HEAD)
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
    job = await store.get_job("j1")
    assert job is not None and job["session_id"] == "old"
    await new_ckpt(store, "c1", user="u", sid="old")
    assert await store.checkpoint_usage("u") == (1, 1000)
    assert query(db_path, "PRAGMA foreign_key_check") == []


def test_downgrade_drops_checkpoints(url: str, db_path: Path) -> None:
    _migrate(url, "upgrade", "head")
    _migrate(url, "downgrade", "0002")
    tables = {r[0] for r in query(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert "checkpoints" not in tables
    assert {"sessions", "jobs", "job_events"} <= tables
    assert query(db_path, "SELECT version_num FROM alembic_version") == [("0002",)]
    _migrate(url, "upgrade", "head")  # and back up again
    assert query(db_path, "SELECT version_num FROM alembic_version") == [(HEAD,)]
