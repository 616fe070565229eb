"""``SessionManager.readopt_workers = False`` with the Docker backend (docs/docker.md).

Containers do not die with their hub (a parent-death signal cannot cross the container
boundary), so the next hub start must stop the containers a previous hub left and mark
their sessions failed. Runs against the private engine of tests/docker_engine.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_docker import ok, start

pytestmark = pytest.mark.docker

REASON = "the hub restarted and does not re-adopt workers"


async def test_readopt_false_stops_the_containers_a_previous_hub_left(
    make_hub, docker_engine, tmp_path
):
    data = tmp_path / "shared"
    config = docker_engine.hub_config(SessionManager__readopt_workers=False)
    # the first hub goes away without stopping its workers (as a crash would)
    app1, client1 = await make_hub(
        data_dir=data, SessionManager__stop_workers_on_shutdown=False, **config
    )
    sids = [await start(client1) for _ in "ab"]
    await ok(client1, sids[0], "set_value", twig="period@binary", value=2.5)
    cids = [app1.manager.sessions[sid].spawner.container_id for sid in sids]
    run_dirs = [app1.manager.sessions[sid].spawner.host_run_dir for sid in sids]
    await app1.cleanup()
    # the containers outlived their hub
    assert [docker_engine.client.containers.get(c).status for c in cids] == ["running"] * 2

    app2, client2 = await make_hub(data_dir=data, **config)
    listed = (await client2.get("/dash/sessions")).json()
    for sid in sids:
        assert listed[sid]["status"] == "failed", listed[sid]
        assert listed[sid]["reason"] == REASON
        row = await app2.store.get_session(sid)
        assert row["status"] == "failed" and row["termination_reason"] == REASON
        assert row["spawner_state"] == {}
    left = {c.id for c in docker_engine.containers()}
    assert not left & set(cids)  # stopped and removed
    for run_dir in run_dirs:
        assert run_dir
        assert not Path(run_dir).exists()  # the host side of /run/phoebe
    resp = await client2.send(sids[0], "ping")
    assert resp.status == 410
