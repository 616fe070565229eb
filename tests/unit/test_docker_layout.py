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
