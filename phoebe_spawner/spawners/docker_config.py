"""The configuration of the Docker backend: every trait of :class:`DockerSpawner`.

Kept apart from the spawner's lifecycle (``docker.py``) so each file holds one idea.
Configure it as ``c.DockerSpawner.<trait>`` (traitlets applies a subclass's section to
inherited traits); ``docs/docker.md`` explains them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from traitlets import (
    Bool,
    CaselessStrEnum,
    Dict,
    Float,
    Integer,
    List,
    TraitError,
    Unicode,
    default,
    validate,
)

from .base import NUMERICAL_ENV, PHOEBE_ENV, ByteSpecification, Spawner


class DockerSpawnerConfig(Spawner, abstract=True):
    """The traits of the Docker backend (the lifecycle is :class:`DockerSpawner`)."""

    # --- the image ---------------------------------------------------------------------
    image = Unicode(
        "phoebe-spawner-worker:latest",
        help="""The worker image (built from share/phoebe_spawner/docker/Dockerfile). It must
        run ``python -m phoebe_kernel_worker`` (see ``cmd``).""",
    ).tag(config=True)

    allowed_images = List(
        Unicode(),
        help="""If not empty, the only images a session may run: start() refuses any other
        image, including one a subclass or a hook picks per user.""",
    ).tag(config=True)

    pull_policy = CaselessStrEnum(
        ["ifnotpresent", "always", "never"],
        default_value="ifnotpresent",
        help="""When to pull the image: 'ifnotpresent' (pull only if missing), 'always'
        (before every start) or 'never' (a missing image fails the start).""",
    ).tag(config=True)

    pull_timeout = Float(
        600.0, help="Seconds an image pull may take (not counted in start_timeout)."
    ).tag(config=True)

    # --- networking --------------------------------------------------------------------
    network_mode = Unicode(
        "none",
        help="""Docker network mode: 'none' (the default and the safest: the worker talks to
        the hub through ipc sockets in a bind-mounted directory) or 'host' (the worker
        binds TCP on ``ip``, normally 127.0.0.1). Use ``network_name`` for a private
        network instead.""",
    ).tag(config=True)

    network_name = Unicode(
        "",
        help="""A user-defined docker network to attach containers to (overrides
        network_mode). The worker binds TCP inside its container and the hub connects to
        the container's address on that network, so the hub must be able to route there
        (the same host, or a container on the same network). Nothing is published on the
        host's interfaces.""",
    ).tag(config=True)

    transport = CaselessStrEnum(
        ["auto", "ipc", "tcp"],
        default_value="auto",
        help="""How the hub reaches the worker's ZeroMQ channels: 'ipc' (sockets in the
        bind-mounted runtime directory; needs the hub on the same host), 'tcp', or 'auto'
        (ipc with network_mode 'none', tcp otherwise).""",
    ).tag(config=True)

    ipc_fallback_root = Unicode(
        help="""A short directory for a session's runtime mount when the path under the
        hub's data_dir is too long for a Unix socket (108 bytes). Default:
        $TMPDIR/phoebe-spawner-ipc-<uid>.""",
    ).tag(config=True)

    @default("ipc_fallback_root")
    def _default_ipc_fallback_root(self) -> str:
        return str(Path(tempfile.gettempdir()) / f"phoebe-spawner-ipc-{os.geteuid()}")

    # --- storage -----------------------------------------------------------------------
    volumes = Dict(
        help="""Extra mounts: ``{host_path: container_path}`` (read-only) or ``{host_path:
        {"bind": container_path, "mode": "ro"|"rw"}}``. ``{username}``, ``{user_id}`` and
        ``{session_id}`` in either path are replaced by escaped, filesystem-safe values,
        e.g. ``{"/srv/shared/{username}": {"bind": "/data", "mode": "rw"}}``.""",
    ).tag(config=True)

    session_mount = Unicode(
        "/srv/phoebe/session",
        help="Where the session's own (writable) directory appears inside the container.",
    ).tag(config=True)

    runtime_mount = Unicode(
        "/run/phoebe",
        help="Where the connection file, ready file and ipc sockets appear in the container.",
    ).tag(config=True)

    tmpfs_size = ByteSpecification(
        "256M", help="Size of the container's /tmp (tmpfs; counts towards mem_limit)."
    ).tag(config=True)

    # --- limits and hardening ------------------------------------------------------------
    pids_limit = Integer(
        512, help="Processes and threads one container may run (0 = no limit)."
    ).tag(config=True)

    container_user = Unicode(
        help="""``uid:gid`` the worker runs as; never root. Default: the hub's own uid:gid,
        or 1000:1000 when the hub runs as root (which then hands the session's files to
        that uid). A hub that is not root can only run containers as its own uid.""",
    ).tag(config=True)

    @default("container_user")
    def _default_container_user(self) -> str:
        if os.geteuid() == 0:
            return "1000:1000"
        return f"{os.geteuid()}:{os.getegid()}"

    @validate("container_user")
    def _validate_container_user(self, proposal: dict[str, Any]) -> str:
        value = str(proposal["value"])
        uid, _, gid = value.partition(":")
        if not (uid.isdigit() and (gid.isdigit() or not gid)):
            raise TraitError(f"container_user must be numeric 'uid:gid', not {value!r}")
        if int(uid) == 0 or (gid and int(gid) == 0):
            raise TraitError("container_user must not be root")
        return value if gid else f"{uid}:{uid}"

    extra_host_config = Dict(
        help="""Extra docker HostConfig arguments (docker SDK names, e.g. ``{"cpuset_cpus":
        "0-3"}``), applied last: they can override the hardening, so review them.""",
    ).tag(config=True)

    extra_create_kwargs = Dict(
        help="Extra arguments for the docker SDK's create_container (e.g. ``hostname``).",
    ).tag(config=True)

    remove = Bool(
        True,
        help="""Remove the container once it stopped (its logs go with it). The spawner
        removes it itself after reading its exit status, rather than docker's AutoRemove,
        which would lose the status and the out-of-memory flag.""",
    ).tag(config=True)

    name_template = Unicode(
        "phoebe-{username}-{session_id}",
        help="""Container names: ``{username}``, ``{user_id}`` and ``{session_id}`` are
        escaped so names are docker-safe and distinct users never collide. Must contain
        ``{session_id}``.""",
    ).tag(config=True)

    @validate("name_template")
    def _validate_name_template(self, proposal: dict[str, Any]) -> str:
        value = str(proposal["value"])
        if "{session_id}" not in value:
            raise TraitError("name_template must contain {session_id} to be collision-free")
        return value

    stop_timeout = Float(
        5.0, help="Seconds docker waits after SIGTERM before SIGKILL when stopping."
    ).tag(config=True)

    # --- the engine --------------------------------------------------------------------
    docker_host = Unicode(
        "",
        help="""The engine's address (``unix:///var/run/docker.sock``, ``tcp://host:2376``).
        Empty: the standard DOCKER_HOST / DOCKER_TLS_VERIFY / DOCKER_CERT_PATH variables.""",
    ).tag(config=True)
    tls_verify = Bool(False, help="Verify the engine's TLS certificate (tcp docker_host).").tag(
        config=True
    )
    tls_ca = Unicode("", help="CA certificate file for the engine's TLS.").tag(config=True)
    tls_cert = Unicode("", help="Client certificate file for the engine's TLS.").tag(config=True)
    tls_key = Unicode("", help="Client key file for the engine's TLS.").tag(config=True)
    docker_timeout = Float(60.0, help="Seconds one docker API call may take.").tag(config=True)

    ready_check_interval = Float(
        0.02, help="How often start() looks for the worker's ready file."
    ).tag(config=True)

    # --- defaults that differ from the local backend ----------------------------------------

    @default("cmd")
    def _default_cmd(self) -> list[str]:
        return ["python", "-m", "phoebe_kernel_worker"]

    @default("env_keep")
    def _default_env_keep(self) -> list[str]:
        # host paths (PATH, PYTHONPATH, VIRTUAL_ENV, PHOEBE_PBDIR) mean nothing inside the
        # image; the numerical libraries' settings do (the container runs on this CPU)
        phoebe = [p for p in PHOEBE_ENV if p != "PHOEBE_PBDIR"]
        return ["LANG", "LC_ALL", "TZ", *phoebe, *NUMERICAL_ENV]
