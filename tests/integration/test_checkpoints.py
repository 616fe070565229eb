"""Checkpoints: on demand, before culls and at shutdown; restoring; retention and quotas."""

from __future__ import annotations

import hashlib
import logging
import time
from logging.handlers import BufferingHandler
from pathlib import Path

import pytest

from ..conftest import Client, register
from ..waiting import async_wait_for


async def start(client: Client, body: dict | None = None, token: str | None = None) -> str:
    resp = await client.post("/dash/start-session", body or {}, token=token)
    assert resp.status == 200, resp.body
    return str(resp.json()["session_id"])


async def checkpoint(client: Client, sid: str, token: str | None = None, **body) -> dict:
    resp = await client.post(f"/api/v1/sessions/{sid}/checkpoints", body, token=token)
    assert resp.status == 201, resp.body
    return resp.json()


async def test_checkpoint_list_download_restore_delete(make_hub):
    app, client = await make_hub()
    sid = await start(client, {"project_name": "Algol"})
    await client.send(sid, "set_value", twig="period@binary", value=2.87)
    cp = await checkpoint(client, sid, name="before fitting")
    assert (
        cp["reason"] == "manual"
        and cp["name"] == "before fitting"
        and cp["project_name"] == "Algol"
    )
    assert cp["session_id"] == sid and cp["size"] > 0
    bundle = await client.get(cp["links"]["bundle"])
    assert bundle.status == 200 and hashlib.sha256(bundle.body).hexdigest() == cp["sha256"]
    files = list(Path(app.data_dir, "checkpoints").rglob("*.json"))
    assert len(files) == 1 and oct(files[0].stat().st_mode & 0o777) == "0o600"
    listed = (await client.get("/api/v1/checkpoints")).json()
    assert listed["total"] == 1 and listed["checkpoints"][0] == cp
    assert (await client.get(f"/api/v1/checkpoints?session_id={sid}")).json()["total"] == 1

    restored = await start(client, {"checkpoint_id": cp["checkpoint_id"]})
    assert (await client.send(restored, "get_value", twig="period@binary")).json()["result"] == 2.87
    session = (await client.get("/dash/sessions")).json()[restored]
    assert session["project_name"] == "Algol"
    again = await checkpoint(client, restored)
    assert again["sha256"] == cp["sha256"]  # the same model, the same fingerprint

    assert (await client.request("DELETE", cp["links"]["self"])).status == 200
    assert (await client.get(cp["links"]["self"])).status == 404
    assert not files[0].exists()


async def test_checkpoints_are_private(make_hub):
    app, client = await make_hub(auth_mode="jwt")
    alice = await register(client, "alice@example.org")
    bob = await register(client, "bob@example.org")
    sid = await start(client, token=alice)
    cp = await checkpoint(client, sid, token=alice)
    for path in (cp["links"]["self"], cp["links"]["bundle"]):
        assert (await client.get(path, token=bob)).status == 404
    assert (await client.request("DELETE", cp["links"]["self"], token=bob)).status == 404
    assert (await client.post(f"/api/v1/sessions/{sid}/checkpoints", {}, token=bob)).status == 403
    resp = await client.post(
        "/dash/start-session", {"checkpoint_id": cp["checkpoint_id"]}, token=bob
    )
    assert resp.status == 404
    assert [s for s in app.manager.sessions.values() if s.user.name == "bob@example.org"] == []
    assert (await client.get("/api/v1/checkpoints", token=bob)).json()["total"] == 0


async def test_damaged_or_missing_checkpoint_starts_nothing(make_hub):
    app, client = await make_hub()
    sid = await start(client)
    cp = await checkpoint(client, sid)
    (path,) = Path(app.data_dir, "checkpoints").rglob("*.json")
    path.write_bytes(path.read_bytes() + b" ")
    resp = await client.post("/dash/start-session", {"checkpoint_id": cp["checkpoint_id"]})
    assert resp.status == 503 and "damaged" in resp.detail
    path.unlink()
    resp = await client.post("/dash/start-session", {"checkpoint_id": cp["checkpoint_id"]})
    assert resp.status == 503 and "no file" in resp.detail
    assert len(app.manager.active()) == 1
    assert (await client.post("/dash/start-session", {"checkpoint_id": "nope"})).status == 404
    assert (await client.post("/dash/start-session", {"checkpoint_id": 5})).status == 400


async def test_idle_cull_checkpoints_first(make_hub):
    app, client = await make_hub(
        SessionManager__idle_timeout=0.6, SessionManager__cull_interval=0.2
    )
    sid = await start(client, {"project_name": "culled"})
    await client.send(sid, "set_value", twig="incl@binary", value=86.5)
    await async_wait_for(
        lambda: app.manager.sessions[sid].status == "culled",
        "the idle session to be culled",
        timeout=10,
    )
    row = await app.store.get_session(sid)
    assert row["status"] == "culled"
    cps = (await client.get("/api/v1/checkpoints")).json()["checkpoints"]
    assert [(c["reason"], c["session_id"]) for c in cps] == [("cull", sid)]
    restored = await start(client, {"checkpoint_id": cps[0]["checkpoint_id"]})
    assert (await client.send(restored, "get_value", twig="incl@binary")).json()["result"] == 86.5


async def test_failed_checkpoint_aborts_the_cull(make_hub):
    app, client = await make_hub(SessionManager__idle_timeout=600)
    sid = await start(client)
    await client.send(sid, "set_value", twig="fail_get_bundle", value=True)
    handler = BufferingHandler(capacity=100)  # the hub log's warnings
    handler.setLevel(logging.WARNING)
    app.log.addHandler(handler)
    try:
        for _ in range(3):  # several cull passes (driven here), each of which must give up
            app.manager.sessions[sid].last_activity = time.time() - 601  # idle long enough
            await app.manager.cull_idle()
            assert app.manager.sessions[sid].status == "running"
    finally:
        app.log.removeHandler(handler)
    assert [r.getMessage() for r in handler.buffer] == 3 * [
        f"not culling session {sid}: checkpoint failed: "
        "The worker could not save its bundle: get_bundle failed on purpose"
    ]
    assert (await client.get("/api/v1/checkpoints")).json()["total"] == 0
    await client.send(sid, "set_value", twig="fail_get_bundle", value=False)
    app.manager.sessions[sid].last_activity = time.time() - 601
    await app.manager.cull_idle()
    assert app.manager.sessions[sid].status == "culled"  # listed, with its reason
    assert (await app.store.get_session(sid))["status"] == "culled"


async def test_checkpoints_do_not_count_as_activity(make_hub):
    app, client = await make_hub()
    sid = await start(client)
    before = app.manager.sessions[sid].last_activity
    await app.checkpoints.save(app.manager.sessions[sid], "cull")
    assert app.manager.sessions[sid].last_activity == before


async def test_shutdown_checkpoints_every_session(make_hub, tmp_path):
    data = tmp_path / "shared"
    app1, client1 = await make_hub(data_dir=data)
    a = await start(client1)
    b = await start(client1)
    await client1.send(a, "set_value", twig="x", value=1)
    await client1.send(b, "set_value", twig="x", value=2)
    first = await checkpoint(client1, a)
    await app1.cleanup()
    _, client2 = await make_hub(data_dir=data)
    cps = (await client2.get("/api/v1/checkpoints")).json()["checkpoints"]
    shutdown = {c["session_id"]: c for c in cps if c["reason"] == "shutdown"}
    assert set(shutdown) == {a, b}
    assert shutdown[a]["sha256"] == first["sha256"]
    restored = await start(client2, {"checkpoint_id": shutdown[b]["checkpoint_id"]})
    assert (await client2.send(restored, "get_value", twig="x")).json()["result"] == 2


async def test_retention_and_quotas(make_hub):
    app, client = await make_hub(CheckpointManager__max_per_user=2)
    sid = await start(client)
    ids = []
    for i in range(3):
        await client.send(sid, "set_value", twig="i", value=i)
        ids.append((await checkpoint(client, sid))["checkpoint_id"])
    listed = [
        c["checkpoint_id"] for c in (await client.get("/api/v1/checkpoints")).json()["checkpoints"]
    ]
    assert listed == [ids[2], ids[1]]  # newest first, the oldest dropped
    assert len(list(Path(app.data_dir, "checkpoints").rglob("*.json"))) == 2

    _, client2 = await make_hub(CheckpointManager__max_checkpoint_bytes=10)
    sid2 = await start(client2)
    await client2.send(sid2, "set_value", twig="big", value="x" * 100)
    resp = await client2.post(f"/api/v1/sessions/{sid2}/checkpoints", {})
    assert resp.status == 413 and "bytes" in resp.detail

    _, client3 = await make_hub(CheckpointManager__max_bytes_per_user=50)
    sid3 = await start(client3)
    await client3.send(sid3, "set_value", twig="big", value="x" * 100)
    resp = await client3.post(f"/api/v1/sessions/{sid3}/checkpoints", {})
    assert resp.status == 507 and "quota" in resp.detail


async def test_checkpoint_bad_input(make_hub):
    _, client = await make_hub()
    sid = await start(client)
    assert (await client.post(f"/api/v1/sessions/{sid}/checkpoints", {"name": 5})).status == 400
    assert (await client.post(f"/api/v1/sessions/{sid}/checkpoints", body=b"[1]")).status == 400
    assert (await client.post("/api/v1/sessions/nope/checkpoints", {})).status == 404
    assert (await client.get("/api/v1/checkpoints?limit=0")).status == 400


@pytest.mark.phoebe
async def test_phoebe_checkpoint_restores_the_same_model(make_hub):
    _, client = await make_hub(phoebe=True)
    sid = await start(client)
    await client.send(sid, "set_value", twig="period@binary", value=0.73)
    await client.send(sid, "add_dataset", kind="lc", compute_times=[0, 0.1, 0.2])
    cp = await checkpoint(client, sid)
    restored = await start(client, {"checkpoint_id": cp["checkpoint_id"]})
    assert (await client.send(restored, "get_value", twig="period@binary")).json()["result"] == 0.73
    datasets = (await client.send(restored, "get_datasets")).json()["result"]
    assert datasets == {"datasets": {"lc01": {"kind": "lc"}}}
    assert (await checkpoint(client, restored))["sha256"] == cp["sha256"]
