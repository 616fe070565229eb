"""How a session's container is laid out: its name, mounts, limits and security options.

Pure functions (no docker SDK, no event loop) that :class:`~phoebe_spawner.spawners.
docker.spawner.DockerSpawner` calls to configure a container and to read back where
its worker listens; ``docs/docker.md`` has the full picture::

    host                                       container
    <runtime_dir>/c/  (0700, container uid) -> /run/phoebe      connection file, ready file,
                                                                ipc sockets
    <session_dir>     (0700, container uid) -> /srv/phoebe/session   the worker's files
    tmpfs                                      /tmp             HOME, caches
    everything else                            read-only image

The signing key reaches the worker only in ``/run/phoebe/connection.json`` (0600, owned
by the container's user): never through the environment or the command line, so
``docker inspect`` never shows it. The worker reports its bound endpoints in
``/run/phoebe/ready.json`` (``--ready-file``). With the default ``network_mode="none"``
the worker binds ZeroMQ ``ipc://`` sockets in ``/run/phoebe`` and the hub connects to
the same sockets through the host side of that bind mount, so a container needs no
network at all. On a user-defined network (``network_name``) or the host network the
worker binds TCP instead and the hub connects to the container's address on that
network (or to ``ip`` on the host network); no port is ever published on the host's
interfaces.

User-chosen text (names, ids) reaches container names and mount paths only escaped
(:func:`escape_name_part`), so it can neither collide with another user's nor climb out
of the directory a template names.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from ...channels import WorkerEndpoint

NAME_SAFE = re.compile(r"[a-z0-9]")
MAX_USER_PART = 40
LABEL_SESSION = "org.phoebe-spawner.session"
LABEL_USER = "org.phoebe-spawner.user"
#: Unix socket paths are limited to 108 bytes; stay clear of the limit.
MAX_IPC_PATH = 100
#: The container's private tmpfs (not the host's /tmp): HOME and caches live there.
CONTAINER_TMP = "/tmp"  # noqa: S108


def escape_name_part(value: str, max_len: int = MAX_USER_PART) -> str:
    """A docker-safe, collision-free rendering of ``value`` for container names.

    Lower-case ASCII letters and digits stay; every other byte of the UTF-8 encoding
    becomes ``_`` plus two hex digits (``_`` itself too), so two different values never
    give the same result and the output never contains the ``-`` that templates use as
    a separator. Long values are cut at a whole escape and get a short hash, which keeps
    names readable; the session id in the template keeps them unique.
    """
    out: list[str] = []
    for byte in value.encode("utf-8"):
        ch = chr(byte)
        out.append(ch if byte < 128 and NAME_SAFE.fullmatch(ch) else f"_{byte:02x}")
    escaped = "".join(out) or "_"
    if len(escaped) <= max_len:
        return escaped
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:8]
    cut = ""
    for piece in out:
        if len(cut) + len(piece) > max_len - 9:
            break
        cut += piece
    return f"{cut}_{digest}"


def container_name(template: str, *, username: str, user_id: str, session_id: str) -> str:
    """Render ``name_template`` with escaped fields; raises ``ValueError`` if not docker-safe."""
    name = template.format(
        username=escape_name_part(username),
        user_id=escape_name_part(user_id),
        session_id=escape_name_part(session_id, max_len=64),
    )
    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,200}", name):
        raise ValueError(f"container name {name!r} from the name template is not valid for docker")
    return name


def render_volumes(
    volumes: dict[str, Any], fields: dict[str, str], *, default_mode: str = "ro"
) -> list[str]:
    """``volumes`` config -> docker ``binds`` strings (``host:container:mode``).

    Values are a container path (mounted with ``default_mode``) or ``{"bind": path,
    "mode": "ro"|"rw"}``. ``{username}``, ``{user_id}`` and ``{session_id}`` in either
    path are replaced by filesystem-safe renderings, so a user name cannot climb out of
    the directory the template names.
    """
    safe = {k: escape_name_part(v, max_len=64) for k, v in fields.items()}
    binds = []
    for host, spec in volumes.items():
        if isinstance(spec, str):
            bind, mode = spec, default_mode
        elif isinstance(spec, dict) and "bind" in spec:
            bind, mode = str(spec["bind"]), str(spec.get("mode", default_mode))
        else:
            raise ValueError(f"volume {host!r}: expected a path or {{'bind': ..., 'mode': ...}}")
        if mode not in ("ro", "rw"):
            raise ValueError(f"volume {host!r}: mode must be 'ro' or 'rw', not {mode!r}")
        host_path, bind_path = host.format(**safe), bind.format(**safe)
        named = re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", host_path)  # a docker volume
        if not (host_path.startswith("/") or named) or not bind_path.startswith("/"):
            raise ValueError(f"volume {host!r}: use absolute paths (or a docker volume name)")
        binds.append(f"{host_path}:{bind_path}:{mode}")
    return binds


def choose_transport(transport: str, network: str) -> str:
    """``"ipc"`` or ``"tcp"``: ``transport`` unless it is ``"auto"``, which means ipc
    without a network (``network == "none"``) and tcp on one. TCP without a network is
    refused (``ValueError``)."""
    chosen = transport if transport != "auto" else ("ipc" if network == "none" else "tcp")
    if chosen == "tcp" and network == "none":
        raise ValueError("transport 'tcp' needs a network: set network_name or network_mode")
    return chosen


def container_spec(
    *,
    image: str,
    command: list[str],
    runtime_mount: str,
    name: str | None,
    user: str,
    environment: dict[str, str],
    working_dir: str,
    labels: dict[str, str],
) -> dict[str, Any]:
    """The docker SDK ``create_container`` arguments of a worker's container (without its
    ``host_config``): the worker ``command`` reads its connection file from, and writes
    its ready file to, ``runtime_mount``; SIGTERM stops it."""
    return {
        "image": image,
        "command": [
            *command,
            "--connection-file",
            f"{runtime_mount}/connection.json",
            "--ready-file",
            f"{runtime_mount}/ready.json",
        ],
        "name": name,
        "user": user,
        "environment": environment,
        "working_dir": working_dir,
        "labels": labels,
        "stop_signal": "SIGTERM",
    }


def hardened_host_config(
    *,
    mounts: list[str],
    network: str,
    tmpfs_size: int,
    pids_limit: int,
    mem_limit: int | None,
    cpu_limit: float | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The docker SDK ``HostConfig`` arguments of a worker's container.

    Read-only image, a private tmpfs ``/tmp``, every capability dropped, no new
    privileges, an init process, a private IPC namespace, the process limit, and memory
    (without swap beyond it) and CPU limits when set. ``extra``
    (``DockerSpawner.extra_host_config``) is applied last and can override all of it.
    """
    config: dict[str, Any] = {
        "binds": mounts,
        "network_mode": network,
        "read_only": True,
        "tmpfs": {CONTAINER_TMP: f"rw,nosuid,nodev,size={tmpfs_size}"},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "init": True,
        "pids_limit": pids_limit or None,
        "ipc_mode": "private",
    }
    if mem_limit:
        config["mem_limit"] = mem_limit
        config["memswap_limit"] = mem_limit  # no swap beyond the limit
    if cpu_limit:
        config["nano_cpus"] = int(cpu_limit * 1e9)
    config.update(extra)
    return config


def prepare_mounts(
    *,
    runtime_dir: str,
    session_dir: str,
    owner: tuple[int, int],
    ipc: bool,
    fallback_root: str,
    session_id: str,
) -> Path:
    """Make the host side of a session's two mounts; returns the runtime mount's.

    The runtime mount is ``<runtime_dir>/c`` (or, for ``ipc`` sockets when that path is
    too long, :func:`short_run_dir`), emptied of a previous start's ready file and
    sockets. Both directories are 0700 and belong to ``owner``, the container's
    ``(uid, gid)`` (the hub is root, or is that user), so the worker can write them and
    nobody else on the host can read them. ``ValueError`` says why they cannot be made.
    """
    uid, gid = owner
    if os.geteuid() not in (0, uid):
        raise ValueError(
            f"the hub (uid {os.geteuid()}) cannot hand files to container uid {uid}: "
            "run the hub as root or set DockerSpawner.container_user to the hub's uid"
        )
    Path(runtime_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    run_dir = Path(runtime_dir) / "c"
    if ipc and len(str(run_dir / "control")) > MAX_IPC_PATH:
        run_dir = short_run_dir(fallback_root, session_id)
    run_dir.mkdir(mode=0o700, exist_ok=True)
    for stale in ("ready.json", "shell", "control", "iopub"):
        (run_dir / stale).unlink(missing_ok=True)
    session = Path(session_dir)
    session.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(run_dir, uid, gid)
        os.chown(session, uid, gid)
    return run_dir


def short_run_dir(root: str, session_id: str) -> Path:
    """A session's runtime mount under ``root`` (``DockerSpawner.ipc_fallback_root``),
    for data directories whose paths are too long for Unix sockets.

    ``root`` must be the hub's own 0700 directory (it is made if missing); raises
    ``ValueError`` with the reason otherwise, or if even this path is too long.
    """
    base = Path(root)
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = base.lstat()
    if st.st_uid != os.geteuid() or (st.st_mode & 0o077) or base.is_symlink():
        raise ValueError(f"{base} must be a directory owned by the hub with mode 0700")
    run_dir = base / session_id
    if len(str(run_dir / "control")) > MAX_IPC_PATH:
        raise ValueError(f"ipc_fallback_root {base} is too long for Unix sockets")
    return run_dir


def ipc_endpoint(
    endpoints: dict[str, str], runtime_mount: str, host_run_dir: str
) -> WorkerEndpoint:
    """Where the hub dials a worker that bound ``ipc://`` sockets in its runtime mount:
    the same sockets through the host side of the bind mount.

    Only each channel's own socket in the mount is accepted (``ValueError`` otherwise):
    the hub dials addresses it derives itself, never one the worker chose.
    """
    out: dict[str, str] = {}
    for ch, url in endpoints.items():
        if url != f"ipc://{runtime_mount}/{ch}":
            raise ValueError(f"worker bound {ch} on an unexpected endpoint {url}")
        out[ch] = f"ipc://{host_run_dir}/{ch}"
    return WorkerEndpoint(**out)


def tcp_endpoint(endpoints: dict[str, str], host: str) -> WorkerEndpoint:
    """Where the hub dials a worker that bound TCP in its container: the ports it
    reported, on ``host`` (the container's address, or ``ip`` on the host network).

    ``ValueError`` for anything but ``tcp://<address>:<port>``.
    """
    out: dict[str, str] = {}
    for ch, url in endpoints.items():
        port = url.rsplit(":", 1)[-1]
        if not (url.startswith("tcp://") and port.isdigit()):
            raise ValueError(f"worker bound {ch} on an unexpected endpoint {url}")
        out[ch] = f"tcp://{host}:{port}"
    return WorkerEndpoint(**out)
