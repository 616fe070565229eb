"""The Docker backend against a real, private ``dockerd`` (``tests/docker_engine.py``).

Each test runs a real hub whose sessions are containers of the registry-free test
image: the fast fault-injecting test session, or real PHOEBE for the full flow. What
the hub promises is checked where docker keeps it, in ``docker inspect``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path
from typing import Any

import orjson
import pytest
from traitlets.config import Config, Configurable

from phoebe_kernel_worker import protocol
from phoebe_spawner.spawners.base import SpawnError
from phoebe_spawner.spawners.docker import DockerSpawner

from ..conftest import Client
from ..waiting import async_wait_for

pytestmark = pytest.mark.docker

MiB = 1024 * 1024


def inspect(engine: Any, app: Any, sid: str) -> dict[str, Any]:
    spawner = app.manager.sessions[sid].spawner
    attrs: dict[str, Any] = engine.client.api.inspect_container(spawner.container_id)
    return attrs


async def start(client: Client) -> str:
    resp = await client.post("/dash/start-session", {"project_name": "docker"})
    assert resp.status == 200, resp.body
    sid: str = resp.json()["session_id"]
    return sid


async def ok(client: Client, sid: str, command: str, **kwargs: Any) -> Any:
    resp = await client.send(sid, command, **kwargs)
    assert resp.status == 200, resp.body
    body = resp.json()
    assert body["success"] is True, body
    return body["result"]


@pytest.mark.phoebe
async def test_full_phoebe_session_in_a_container(make_hub, docker_engine):
    app, client = await make_hub(phoebe=True, **docker_engine.hub_config(phoebe=True))
    sid = await start(client)
    spawner = app.manager.sessions[sid].spawner
    cid = spawner.container_id
    assert docker_engine.client.containers.get(cid).status == "running"
    assert await ok(client, sid, "set_value", twig="period@binary", value=0.75) == {}
    assert await ok(client, sid, "get_value", twig="period@binary") == 0.75
    times = [0.0, 0.25, 0.5, 0.75]
    await ok(client, sid, "add_dataset", kind="lc", compute_times=times, overwrite=True)
    fluxes = (await ok(client, sid, "run_compute"))["model"]["lc01"]["fluxes"]
    assert len(fluxes) == len(times) and all(f > 0 for f in fluxes)
    resp = await client.post(f"/dash/end-session/{sid}")
    assert resp.status == 200 and resp.json() == {"success": True}
    await async_wait_for(lambda: not app.manager.active(), "the end to finish", timeout=60)
    assert [c.id for c in docker_engine.containers() if c.id == cid] == []  # removed


async def test_hardening_and_limits_are_what_docker_runs(make_hub, docker_engine, tmp_path):
    shared = tmp_path / "shared"
    app, client = await make_hub(
        **docker_engine.hub_config(
            DockerSpawner__mem_limit="300M",
            DockerSpawner__cpu_limit=0.5,
            DockerSpawner__pids_limit=64,
            DockerSpawner__volumes={
                **docker_engine.volumes,
                str(shared / "{username}"): {"bind": "/data", "mode": "rw"},
            },
        )
    )
    (shared / "anonymous").mkdir(parents=True)
    sid = await start(client)
    attrs = inspect(docker_engine, app, sid)
    host, config = attrs["HostConfig"], attrs["Config"]

    assert config["User"] == "1000:1000"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Init"] is True and host["Privileged"] is False
    assert host["Memory"] == host["MemorySwap"] == 300 * MiB
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 64
    assert host["NetworkMode"] == "none"
    assert not host["PortBindings"] and not host["PublishAllPorts"]
    assert not attrs["NetworkSettings"]["Ports"]
    assert "/tmp" in host["Tmpfs"]
    mounts = {m["Destination"]: m for m in attrs["Mounts"]}
    assert mounts["/srv/phoebe/session"]["RW"] is True
    assert mounts["/run/phoebe"]["RW"] is True
    assert mounts["/data"]["Source"] == str(shared / "anonymous") and mounts["/data"]["RW"]
    assert mounts["/usr"]["RW"] is False
    assert config["Labels"]["org.phoebe-spawner.session"] == sid

    # the key: only in the 0600 connection file of the container's user
    key = protocol.derive_session_key(app.manager.secret, sid).decode()
    assert key not in orjson.dumps(attrs).decode()
    assert key not in " ".join(config["Cmd"]) and key not in str(config["Env"])
    env = await ok(client, sid, "env")
    assert key not in orjson.dumps(env).decode() and env["HOME"] == "/tmp"
    conn = Path(app.manager.sessions[sid].spawner.host_run_dir) / "connection.json"
    st = conn.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 1000
    assert key in conn.read_text()

    await client.post(f"/dash/end-session/{sid}")


async def test_memory_limit_kill_fails_the_session_with_the_reason(make_hub, docker_engine):
    app, client = await make_hub(**docker_engine.hub_config(DockerSpawner__mem_limit="128M"))
    sid = await start(client)
    resp = await client.send(sid, "allocate", mib=512)
    assert resp.status == 503, resp.body
    session = (await client.get("/dash/sessions")).json()[sid]
    assert session["status"] == "failed"
    assert "out of memory" in session["reason"] and "128 MiB" in session["reason"]
    row = await app.store.get_session(sid)
    assert "out of memory" in row["termination_reason"]
    await client.post(f"/dash/end-session/{sid}")


async def test_container_removed_behind_the_hubs_back_is_noticed(make_hub, docker_engine):
    app, client = await make_hub(**docker_engine.hub_config())
    sid = await start(client)
    cid = app.manager.sessions[sid].spawner.container_id
    docker_engine.client.api.remove_container(cid, force=True)
    session = app.manager.sessions[sid]
    # noticed by the poll (every 0.2 s in tests), not only when a command fails
    await async_wait_for(lambda: session.status == "failed", "the session to fail", timeout=5)
    assert "removed outside the hub" in (session.reason or "")
    assert (await client.send(sid, "ping")).status == 410


async def test_restart_readopts_the_container_with_the_users_bundle(
    make_hub, docker_engine, tmp_path
):
    data = tmp_path / "shared"
    config = docker_engine.hub_config()
    app1, client1 = await make_hub(
        data_dir=data, SessionManager__stop_workers_on_shutdown=False, **config
    )
    sid = await start(client1)
    await ok(client1, sid, "set_value", twig="period@binary", value=2.5)
    bundle = (await ok(client1, sid, "get_bundle"))["bundle"]
    cid = app1.manager.sessions[sid].spawner.container_id
    await app1.cleanup()
    assert docker_engine.client.containers.get(cid).status == "running"

    app2, client2 = await make_hub(data_dir=data, **config)
    listed = (await client2.get("/dash/sessions")).json()
    assert listed[sid]["status"] == "running", listed[sid]
    assert app2.manager.sessions[sid].spawner.container_id == cid
    assert await ok(client2, sid, "get_value", twig="period@binary") == 2.5
    assert (await ok(client2, sid, "get_bundle"))["bundle"] == bundle
    await client2.post(f"/dash/end-session/{sid}")
    await async_wait_for(lambda: not app2.manager.active(), "the end to finish", timeout=60)
    assert cid not in {c.id for c in docker_engine.containers()}


async def test_restart_fails_a_session_whose_container_died(make_hub, docker_engine, tmp_path):
    data = tmp_path / "shared"
    config = docker_engine.hub_config()
    app1, client1 = await make_hub(
        data_dir=data, SessionManager__stop_workers_on_shutdown=False, **config
    )
    sid = await start(client1)
    cid = app1.manager.sessions[sid].spawner.container_id
    await app1.cleanup()
    docker_engine.client.api.kill(cid, signal="SIGKILL")
    _, client2 = await make_hub(data_dir=data, **config)
    listed = (await client2.get("/dash/sessions")).json()
    assert listed[sid]["status"] == "failed" and "lost" in listed[sid]["reason"]
    assert cid not in {c.id for c in docker_engine.containers()}  # cleaned up


@pytest.mark.parametrize("network", ["private", "host"])
async def test_tcp_networks(make_hub, docker_engine, network):
    if network == "private":
        net = {"DockerSpawner__network_name": docker_engine.network}
    else:
        net = {"DockerSpawner__network_mode": "host"}
    app, client = await make_hub(**docker_engine.hub_config(**net))
    sid = await start(client)
    spawner = app.manager.sessions[sid].spawner
    endpoint = spawner.endpoint
    assert endpoint is not None and spawner.local_pid() is None
    assert all(endpoint.url(ch).startswith("tcp://") for ch in protocol.CHANNELS)
    attrs = inspect(docker_engine, app, sid)
    if network == "private":
        address = attrs["NetworkSettings"]["Networks"][docker_engine.network]["IPAddress"]
        assert endpoint.shell.startswith(f"tcp://{address}:")
    else:
        assert endpoint.shell.startswith("tcp://127.0.0.1:")
    assert not attrs["HostConfig"]["PortBindings"]
    listed = (await client.get("/dash/sessions")).json()[sid]
    assert listed["port"] == endpoint.port
    assert await ok(client, sid, "echo", x=1) == {"x": 1}
    await client.post(f"/dash/end-session/{sid}")


async def test_images_outside_the_allow_list_or_absent_are_refused(make_hub, docker_engine):
    _, client = await make_hub(
        **docker_engine.hub_config(DockerSpawner__allowed_images=["phoebe/worker:1.0"])
    )
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 503 and "not in the allowed images" in resp.detail
    _, client = await make_hub(**docker_engine.hub_config(DockerSpawner__image="absent/image:9"))
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 503 and "not present and pull_policy is 'never'" in resp.detail


async def test_failed_start_reports_the_workers_last_words(make_hub, docker_engine):
    _, client = await make_hub(
        **docker_engine.hub_config(
            DockerSpawner__worker_extra={"fail_start": "no licence for this container"}
        )
    )
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 503 and "no licence for this container" in resp.detail
    assert "exited with status 1 while starting" in resp.detail
    assert not [c for c in docker_engine.containers() if "anonymous" in c.name]


async def test_progress_names_the_container_steps(make_hub, docker_engine):
    app, client = await make_hub(**docker_engine.hub_config())
    sid = await start(client)
    spawner = app.manager.sessions[sid].spawner
    messages = [e["message"] async for e in spawner.progress()]
    assert any("Creating the container" in m for m in messages)
    assert any(spawner.container_name in m for m in messages)
    assert messages[-1] == "Worker ready"
    assert spawner.container_name.startswith("phoebe-anonymous-")
    run_dir = spawner.host_run_dir
    assert run_dir and os.path.exists(run_dir)
    await client.post(f"/dash/end-session/{sid}")
    await async_wait_for(lambda: not app.manager.active(), "the end to finish", timeout=60)
    assert not os.path.exists(run_dir)


async def test_poll_is_none_while_the_image_is_pulled(docker_engine, tmp_path):
    # a "registry" that accepts the engine's connection and never answers: the pull hangs
    # until the socket closes, so the test looks at a start that is certainly mid-pull
    registry = socket.socket()
    registry.bind(("127.0.0.1", 0))
    registry.listen()
    port = registry.getsockname()[1]
    parent = Configurable(config=Config({"DockerSpawner": {"docker_host": docker_engine.url}}))
    connection = await DockerSpawner.start_backend(parent, str(tmp_path / "rt"))
    spawner = DockerSpawner(
        backend=connection,
        session_id="pull-1",
        user={"name": "puller", "user_id": "puller"},
        key="0" * 64,
        session_dir=str(tmp_path / "s"),
        runtime_dir=str(tmp_path / "r"),
        **{
            **docker_engine.traits(),
            "image": f"127.0.0.1:{port}/phoebe:1",
            "pull_policy": "always",
        },
    )
    task = asyncio.ensure_future(spawner.start())
    conn = None
    try:
        async for event in spawner.progress():
            if event["message"].startswith("Pulling image"):
                break
        conn, _ = await asyncio.wait_for(asyncio.to_thread(registry.accept), 30)
        assert await spawner.poll() is None and not task.done()
    finally:
        if conn is not None:
            conn.close()
        registry.close()
        with pytest.raises(SpawnError, match="docker could not start the worker"):
            await asyncio.wait_for(task, 60)
    assert isinstance(await spawner.poll(), int)
    spawner.clear_state()
    await DockerSpawner.stop_backend(connection)


async def test_a_container_the_hub_never_recorded_is_removed_at_restart(
    make_hub, docker_engine, tmp_path
):
    data = tmp_path / "shared"
    config = docker_engine.hub_config()
    app1, client1 = await make_hub(
        data_dir=data, SessionManager__stop_workers_on_shutdown=False, **config
    )
    sid = await start(client1)
    spawner = app1.manager.sessions[sid].spawner
    cid, run_dir = spawner.container_id, spawner.host_run_dir
    # as if the hub had died between creating the container and recording it
    await app1.store.update_session(sid, status="pending", spawner_state={})
    await app1.cleanup()
    assert docker_engine.client.containers.get(cid).status == "running"
    _, client2 = await make_hub(data_dir=data, **config)
    listed = (await client2.get("/dash/sessions")).json()
    assert listed[sid]["status"] == "failed"
    assert cid not in {c.id for c in docker_engine.containers()}
    assert run_dir and not os.path.exists(run_dir)
