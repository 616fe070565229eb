"""The Docker backend's pure parts: names, volumes, exit statuses, configuration checks.

No engine needed: these run in every tier.
"""

from __future__ import annotations

import itertools
import re
import signal

import pytest
from traitlets import TraitError
from traitlets.config import Config, Configurable

from phoebe_spawner.spawners.base import SpawnError
from phoebe_spawner.spawners.docker import DockerSpawner, engine, layout

TRICKY = [
    "ada",
    "Ada",
    "ada-1",
    "ada_1",
    "ada_2d1",
    "a.b",
    "a/b",
    "../etc",
    "x" * 200,
    "x" * 199 + "y",
    "名前",
    "",
    "a b",
    "a\x00b",
]


def test_escaped_names_are_docker_safe_and_never_collide():
    escaped = {v: layout.escape_name_part(v) for v in TRICKY}
    assert len(set(escaped.values())) == len(TRICKY)
    for value, out in escaped.items():
        assert re.fullmatch(r"[a-z0-9_]+", out), (value, out)
        assert len(out) <= layout.MAX_USER_PART
    assert escaped["ada"] == "ada" and escaped["Ada"] == "_41da"


def test_container_names_keep_users_and_sessions_apart():
    names = {
        layout.container_name("phoebe-{username}-{session_id}", username=u, user_id=u, session_id=s)
        for u, s in itertools.product(["ada", "ada-x", "ada-x-y", "Ada"], ["x-y", "y", "1"])
    }
    assert len(names) == 12
    assert all(re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", n) for n in names)
    with pytest.raises(ValueError, match="not valid for docker"):
        layout.container_name("-{session_id}", username="a", user_id="a", session_id="s")


def test_name_template_must_contain_the_session_id():
    with pytest.raises(TraitError, match="session_id"):
        DockerSpawner(name_template="phoebe-{username}")


def test_container_user_is_never_root():
    assert DockerSpawner(container_user="1000").container_user == "1000:1000"
    for bad in ("0:1000", "1000:0", "root", "1000:abc"):
        with pytest.raises(TraitError):
            DockerSpawner(container_user=bad)


def test_volumes_are_templated_with_escaped_fields():
    binds = layout.render_volumes(
        {
            "/srv/users/{username}": {"bind": "/data", "mode": "rw"},
            "/srv/shared": "/shared",
            "phoebe-cache": {"bind": "/cache/{session_id}"},
        },
        {"username": "../../etc", "user_id": "u", "session_id": "S1"},
    )
    assert binds == [
        "/srv/users/_2e_2e_2f_2e_2e_2fetc:/data:rw",
        "/srv/shared:/shared:ro",
        "phoebe-cache:/cache/_531:ro",
    ]
    with pytest.raises(ValueError, match="mode"):
        layout.render_volumes({"/a": {"bind": "/b", "mode": "rwx"}}, {})
    with pytest.raises(ValueError, match="absolute"):
        layout.render_volumes({"relative/path": "/b"}, {})
    with pytest.raises(ValueError, match="absolute"):
        layout.render_volumes({"/a": "relative"}, {})


def test_exit_codes_map_to_the_contracts_statuses():
    assert engine.status_from_exit_code(0) == 0
    assert engine.status_from_exit_code(3) == 3
    assert engine.status_from_exit_code(137) == -signal.SIGKILL
    assert engine.status_from_exit_code(143) == -signal.SIGTERM
    assert engine.status_from_exit_code(128) == 128
    assert engine.status_from_exit_code(255) == 255


def test_image_names_split_into_repository_and_tag():
    assert engine.split_image("phoebe") == ("phoebe", "latest")
    assert engine.split_image("reg.example:5000/phoebe") == ("reg.example:5000/phoebe", "latest")
    assert engine.split_image("reg.example:5000/phoebe:2.5") == ("reg.example:5000/phoebe", "2.5")
    assert engine.split_image("phoebe@sha256:abc") == ("phoebe", "sha256:abc")


async def test_tcp_without_a_network_is_refused_before_anything_starts(tmp_path):
    spawner = DockerSpawner(
        session_id="s",
        runtime_dir=str(tmp_path / "rt"),
        session_dir=str(tmp_path / "s"),
        transport="tcp",
    )
    with pytest.raises(SpawnError, match="needs a network"):
        await spawner.start()
    assert not (tmp_path / "rt").exists()
    assert await spawner.poll() == 0


async def test_the_hub_wide_engine_connection_comes_from_start_backend():
    config = Config()
    config.DockerSpawner.docker_host = "unix:///nonexistent/docker.sock"
    config.DockerSpawner.docker_timeout = 7.0
    parent = Configurable(config=config)
    backend = await DockerSpawner.start_backend(parent, "/nonexistent/runtime")
    assert isinstance(backend, engine.EngineConnection)
    assert (backend.base_url, backend.timeout) == ("unix:///nonexistent/docker.sock", 7.0)
    spawner = DockerSpawner(parent=parent, backend=backend)
    assert spawner.engine is backend
    await DockerSpawner.stop_backend(backend)
    with pytest.raises(RuntimeError, match="shutdown"):
        await backend.api("ping")  # closed: its threads take no more calls
    await DockerSpawner.stop_backend(backend)  # idempotent
    with pytest.raises(RuntimeError, match="no engine"):
        _ = DockerSpawner().engine


def test_the_traits_are_configured_on_docker_spawner_itself():
    own = DockerSpawner.class_own_traits(config=True)
    assert {"image", "docker_host", "network_mode", "volumes", "pids_limit"} <= set(own)
    assert [c.__name__ for c in DockerSpawner.__mro__[:2]] == ["DockerSpawner", "Spawner"]
    config = Config()
    config.DockerSpawner.image = "site/worker:2"
    assert DockerSpawner(config=config).image == "site/worker:2"


def test_the_hub_dials_only_endpoints_it_derives_itself():
    inside = {ch: f"ipc:///run/phoebe/{ch}" for ch in ("shell", "control", "iopub")}
    endpoint = layout.ipc_endpoint(inside, "/run/phoebe", "/data/runtime/s1/c")
    assert endpoint.shell == "ipc:///data/runtime/s1/c/shell"
    assert endpoint.iopub == "ipc:///data/runtime/s1/c/iopub"
    for bad in ("ipc:///tmp/elsewhere/shell", "ipc:///run/phoebe/control", "tcp://1.2.3.4:5"):
        with pytest.raises(ValueError, match="unexpected endpoint"):
            layout.ipc_endpoint({**inside, "shell": bad}, "/run/phoebe", "/data/runtime/s1/c")
    # TCP: the reported ports, on the address the hub looked up (never the reported host)
    reported = {"shell": "tcp://0.0.0.0:5001", "control": "tcp://9.9.9.9:5002"}
    endpoint = layout.tcp_endpoint({**reported, "iopub": "tcp://x:5003"}, "172.18.0.5")
    assert (endpoint.shell, endpoint.control, endpoint.iopub) == (
        "tcp://172.18.0.5:5001",
        "tcp://172.18.0.5:5002",
        "tcp://172.18.0.5:5003",
    )
    for bad in ("ipc:///run/phoebe/iopub", "tcp://1.2.3.4:port"):
        with pytest.raises(ValueError, match="unexpected endpoint"):
            layout.tcp_endpoint({**reported, "iopub": bad}, "172.18.0.5")


def test_transport_follows_the_network_and_tcp_needs_one():
    assert layout.choose_transport("auto", "none") == "ipc"
    assert layout.choose_transport("auto", "host") == "tcp"
    assert layout.choose_transport("ipc", "phoebe-net") == "ipc"
    with pytest.raises(ValueError, match="needs a network"):
        layout.choose_transport("tcp", "none")


def test_extra_host_config_is_applied_last():
    config = layout.hardened_host_config(
        mounts=["/a:/b:ro"],
        network="none",
        tmpfs_size=1024,
        pids_limit=0,
        mem_limit=None,
        cpu_limit=None,
        extra={"cpuset_cpus": "0-1", "read_only": False},
    )
    assert config["cap_drop"] == ["ALL"] and config["security_opt"] == ["no-new-privileges"]
    assert config["pids_limit"] is None and "mem_limit" not in config  # 0/None: no limit
    assert config["tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=1024"}
    assert config["cpuset_cpus"] == "0-1" and config["read_only"] is False
