"""Upgrading a PostgreSQL database that carries rows (as the SQLite upgrade test does).

A database at the first schema revision, holding a user, sessions, memory samples and
command records written with the SQL of that revision, is refused by a hub without
``--upgrade-db`` and migrated to the head with it; every row survives, the foreign
keys still cascade, and the tables later revisions added work beside the old rows.
"""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from phoebe_spawner.store import Store, make_engine, schema_status
from phoebe_spawner.store.schema import DatabaseSchemaError, _alembic_config

pytestmark = pytest.mark.postgres


def seed_revision_0001(url: str, now: float) -> None:
    """Bring a new database to revision 0001 and fill it with that revision's SQL."""
    from alembic import command

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn), "0001")
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO users (name, email, password_hash, first_name, admin, "
                    "created_at) VALUES ('ada@example.org', 'ada@example.org', 'h1', 'Ada', "
                    "true, :now)"
                ),
                {"now": now},
            )
            for sid, status in (("s-old", "stopped"), ("s-live", "running")):
                conn.execute(
                    sa.text(
                        "INSERT INTO sessions (id, user_id, user_name, status, spawner_class, "
                        "spawner_state, metadata, project_name, port, created_at, "
                        "last_activity, command_count) VALUES (:id, '1', 'ada@example.org', "
                        ":status, 'local', CAST(:state AS JSON), CAST(:meta AS JSON), "
                        ":project, 40001, :now, :now, 2)"
                    ),
                    {
                        "id": sid,
                        "status": status,
                        "state": '{"pid": 1234}',
                        "meta": '{"project_name": "binary ' + sid + '"}',
                        "project": f"binary {sid}",
                        "now": now,
                    },
                )
                for i in range(3):
                    conn.execute(
                        sa.text(
                            "INSERT INTO session_metrics (session_id, ts, mem_used, "
                            "cpu_percent) VALUES (:sid, :ts, :mem, 12.5)"
                        ),
                        {"sid": sid, "ts": now + i, "mem": 100.0 + i},
                    )
                for command_name in ("set_value", "run_compute"):
                    conn.execute(
                        sa.text(
                            "INSERT INTO session_commands (session_id, user_id, command, "
                            "started_at, duration_ms, success, error) VALUES (:sid, '1', "
                            ":command, :now, 1.5, true, NULL)"
                        ),
                        {"sid": sid, "command": command_name, "now": now},
                    )
    finally:
        engine.dispose()


async def test_upgrade_of_a_postgres_database_with_rows(postgres):
    url = postgres.create_database("upgrade_with_rows")
    now = time.time()
    seed_revision_0001(url, now)

    store = Store(url)
    with pytest.raises(DatabaseSchemaError, match="upgrade-db"):
        await store.init()
    await store.close()

    store = Store(url)
    await store.init(upgrade=True)
    try:
        current, head = schema_status(store.engine)
        assert current == head and head != "0001"
        user = await store.get_user_by_name("ada@example.org")
        assert user is not None
        assert (user["email"], user["password_hash"], user["first_name"], user["admin"]) == (
            "ada@example.org",
            "h1",
            "Ada",
            True,
        )
        for sid, status in (("s-old", "stopped"), ("s-live", "running")):
            row = await store.get_session(sid)
            assert row is not None
            assert row["status"] == status and row["project_name"] == f"binary {sid}"
            assert row["spawner_state"] == {"pid": 1234} and row["command_count"] == 2
            assert row["port"] == 40001 and row["created_at"] == pytest.approx(now)
            metrics = await store.get_metrics(sid)
            assert [m["mem_used"] for m in metrics] == [100.0, 101.0, 102.0]
            commands = await store.list_commands(sid)
            assert sorted(c["command"] for c in commands) == ["run_compute", "set_value"]
            assert all(c["success"] is True for c in commands)
        live = await store.list_sessions(statuses=("running",))
        assert [r["id"] for r in live] == ["s-live"]

        # the old rows still cascade: deleting a session takes its samples and records
        with store.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM sessions WHERE id = 's-old'"))
            left = conn.execute(
                sa.text(
                    "SELECT (SELECT count(*) FROM session_metrics WHERE session_id = 's-old'),"
                    " (SELECT count(*) FROM session_commands WHERE session_id = 's-old')"
                )
            ).one()
            assert tuple(left) == (0, 0)
            # a table a later revision added takes jobs of the old sessions, and its
            # foreign key refuses a job of a session that does not exist
            insert_job = sa.text(
                "INSERT INTO jobs (id, session_id, user_id, command, request, created_at) "
                "VALUES (:id, :sid, '1', 'run_compute', :request, :now)"
            )
            job = {"request": b"{}", "now": now}
            conn.execute(insert_job, {"id": "j1", "sid": "s-live", **job})
            refused = pytest.raises(sa.exc.IntegrityError, match="fk_jobs_session_id_sessions")
            with refused, conn.begin_nested():
                conn.execute(insert_job, {"id": "j2", "sid": "s-old", **job})
        assert await store.get_session("s-old") is None
        assert len(await store.get_metrics("s-live")) == 3
    finally:
        await store.close()

    # a second start finds the schema current and needs no upgrade
    again = Store(url)
    await again.init()
    assert schema_status(again.engine)[0] == head
    await again.close()
