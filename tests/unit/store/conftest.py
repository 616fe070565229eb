"""Fixtures and helpers shared by the database tests (real SQLite files in tmp_path)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from phoebe_spawner.store import Store

#: The newest migration; update when adding one (and the test-only "0099" after it).
HEAD = "0003"
StoreFactory = Callable[..., Awaitable[Store]]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "hub.sqlite"


@pytest.fixture
def url(db_path: Path) -> str:
    return f"sqlite:///{db_path}"


@pytest.fixture
async def make_store(url: str) -> AsyncIterator[StoreFactory]:
    """Factory of initialised stores on ``url``; all are closed at teardown."""
    stores: list[Store] = []

    async def factory(*, upgrade: bool = False, **kwargs: Any) -> Store:
        kwargs.setdefault("command_flush_interval", 60.0)  # tests flush explicitly
        store = Store(url, **kwargs)
        stores.append(store)
        await store.init(upgrade=upgrade)
        return store

    yield factory
    for store in stores:
        await store.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> Store:
    return await make_store()


def query(db_path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Run ``sql`` on the database file with a separate sqlite3 connection."""
    con = sqlite3.connect(db_path)
    try:
        rows = con.execute(sql).fetchall()
        con.commit()
        return rows
    finally:
        con.close()
