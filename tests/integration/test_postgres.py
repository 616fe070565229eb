"""The hub on a real PostgreSQL server: migrations, every table, a restart.

Production hubs run on PostgreSQL; SQLite-only assumptions (types, ordering,
concurrency) would show here.
"""

from __future__ import annotations

import pytest

from phoebe_spawner.store import Store, make_engine, schema_status

from ..conftest import register
from ..sse import SSEStream

pytestmark = pytest.mark.postgres


async def test_hub_on_postgres_end_to_end(make_hub, postgres, tmp_path):
    url = postgres.create_database("hub_e2e")
    data = tmp_path / "shared"
    app, client = await make_hub(auth_mode="jwt", data_dir=data, PhoebeSpawnerApp__db_url=url)
    engine = make_engine(url)
    current, head = schema_status(engine)
    engine.dispose()
    assert current == head
    token = await register(client, "pg@example.org")
    sid = (await client.post("/dash/start-session", {"project_name": "pg"}, token=token)).json()[
        "session_id"
    ]
    for i in range(20):
        await client.post(
            f"/send/{sid}", {"command": "set_value", "twig": "n", "value": i}, token=token
        )
    job = (
        await client.post(
            f"/api/v1/sessions/{sid}/jobs", {"command": "steps", "n": 5, "delay": 0.01}, token=token
        )
    ).json()
    stream = await SSEStream.open(client.base_url, job["links"]["events"], token=token)
    events = await stream.events_until_end()
    await stream.close()
    assert events[-1]["event"] == "succeeded"
    cp = (await client.post(f"/api/v1/sessions/{sid}/checkpoints", {}, token=token)).json()
    await app.store.flush_commands()
    logged = [r["command"] for r in await app.store.list_commands(sid, limit=100)]
    assert logged.count("set_value") == 20 and "steps" in logged and "get_bundle" in logged
    await app.cleanup()  # checkpoints again at shutdown

    app2, client2 = await make_hub(auth_mode="jwt", data_dir=data, PhoebeSpawnerApp__db_url=url)
    login = await client2.post(
        "/auth/login", {"email": "pg@example.org", "password": "correct horse battery"}
    )
    token2 = login.json()["access_token"]
    done = (await client2.get(job["links"]["self"], token=token2)).json()
    assert done["status"] == "succeeded" and done["last_event_id"] == events[-1]["id"]
    stream = await SSEStream.open(client2.base_url, job["links"]["events"], token=token2)
    replay = await stream.events_until_end()
    await stream.close()
    assert [(e["id"], e["event"]) for e in replay] == [(e["id"], e["event"]) for e in events]
    cps = (await client2.get("/api/v1/checkpoints", token=token2)).json()
    assert {c["reason"] for c in cps["checkpoints"]} == {"manual", "shutdown"}
    restored = await client2.post(
        "/dash/start-session", {"checkpoint_id": cp["checkpoint_id"]}, token=token2
    )
    rsid = restored.json()["session_id"]
    value = await client2.post(f"/send/{rsid}", {"command": "get_value", "twig": "n"}, token=token2)
    assert value.json()["result"] == 19
    row = await app2.store.get_session(sid)
    assert row["status"] == "stopped" and row["project_name"] == "pg" and row["command_count"] >= 20


async def test_store_upgrade_path_on_postgres(postgres):
    url = postgres.create_database("upgrade_path")
    from alembic import command

    from phoebe_spawner.store.schema import DatabaseSchemaError, _alembic_config

    engine = make_engine(url)
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "0001")
    engine.dispose()
    store = Store(url)
    with pytest.raises(DatabaseSchemaError, match="upgrade-db"):
        await store.init()
    await store.close()
    store = Store(url)
    await store.init(upgrade=True)
    current, head = schema_status(store.engine)
    assert current == head
    await store.close()


async def test_read_only_database_is_503_and_recovers(make_hub, postgres):
    import psycopg

    url = postgres.create_database("read_only")
    _, client = await make_hub(auth_mode="jwt", PhoebeSpawnerApp__db_url=url)
    token = await register(client, "ro@example.org")
    sid = (await client.post("/dash/start-session", {}, token=token)).json()["session_id"]

    def set_read_only(on: bool) -> None:
        with psycopg.connect(postgres.url("postgres", driver=False), autocommit=True) as conn:
            value = "on" if on else "off"
            conn.execute(f"ALTER DATABASE read_only SET default_transaction_read_only = {value}")
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = 'read_only' AND pid <> pg_backend_pid()"
            )

    set_read_only(True)
    try:
        for _ in range(3):
            resp = await client.post("/dash/start-session", {}, token=token)
            assert resp.status == 503 and "Database unavailable" in resp.detail
        resp = await client.post(
            "/auth/register", {"email": "new@example.org", "password": "x" * 10}
        )
        assert resp.status == 503
        reply = await client.post(f"/send/{sid}", {"command": "echo", "n": 1}, token=token)
        assert reply.json() == {"success": True, "result": {"n": 1}}
        assert (await client.get("/health")).json()["status"] == "degraded"
    finally:
        set_read_only(False)
    assert (await client.post("/dash/start-session", {}, token=token)).status == 200
