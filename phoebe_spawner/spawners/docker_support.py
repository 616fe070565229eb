"""Pure helpers of the Docker backend: container names, volume specs, exit statuses, clients.

Used by :mod:`phoebe_spawner.spawners.docker` only. Nothing here talks to the event
loop; :func:`get_client` and :data:`EXECUTOR` are how the spawner reaches the (blocking)
docker SDK from a thread, never from the loop itself.
"""

from __future__ import annotations

import hashlib
import re
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

#: Threads for blocking docker SDK calls: every spawner of the hub shares them, so a
#: slow engine never starves the loop's default executor (used by other services).
EXECUTOR = ThreadPoolExecutor(max_workers=8, thread_name_prefix="docker")

_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()

NAME_SAFE = re.compile(r"[a-z0-9]")
MAX_USER_PART = 40
LABEL_SESSION = "org.phoebe-spawner.session"
LABEL_USER = "org.phoebe-spawner.user"


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


def status_from_exit_code(code: int) -> int:
    """Docker's exit code -> the spawner contract's status (negative for signals).

    The init process reports a worker killed by signal N as ``128 + N``, like a shell;
    the contract (and :func:`phoebe_spawner.session.describe_exit`) wants ``-N``.
    """
    if 128 < code < 128 + 65:
        try:
            return -int(signal.Signals(code - 128))
        except ValueError:
            return code
    return code


def get_client(
    base_url: str,
    *,
    tls_verify: bool,
    tls_ca: str,
    tls_cert: str,
    tls_key: str,
    timeout: float,
) -> Any:
    """A shared ``docker.DockerClient`` per engine address and TLS settings (blocking).

    ``base_url`` empty means the standard ``DOCKER_HOST``/``DOCKER_TLS_VERIFY``/
    ``DOCKER_CERT_PATH`` environment. Called from :data:`EXECUTOR` threads only:
    creating a client asks the engine for its API version. The SDK's connection pool is
    safe to share across threads.
    """
    import docker

    key = (base_url, tls_verify, tls_ca, tls_cert, tls_key, timeout)
    with _clients_lock:
        client = _clients.get(key)
        if client is not None:
            return client
        if not base_url:
            client = docker.from_env(timeout=int(timeout), version="auto")
        else:
            tls: Any = False
            if tls_verify or tls_cert:
                tls = docker.tls.TLSConfig(
                    client_cert=(tls_cert, tls_key) if tls_cert else None,
                    ca_cert=tls_ca or None,
                    verify=tls_ca if (tls_verify and tls_ca) else tls_verify,
                )
            client = docker.DockerClient(
                base_url=base_url, tls=tls, timeout=int(timeout), version="auto"
            )
        _clients[key] = client
        return client


def engine_errors() -> tuple[type[BaseException], ...]:
    """What a docker SDK call raises when the engine refuses or cannot be reached."""
    import docker.errors
    import requests.exceptions

    return (docker.errors.DockerException, requests.exceptions.RequestException)


def mib(nbytes: int) -> str:
    """``268435456`` -> ``"256 MiB"`` (for reasons shown to users)."""
    return f"{nbytes / 1024 / 1024:.0f} MiB"


def split_image(image: str) -> tuple[str, str]:
    """``"repo/name:tag"`` -> (``"repo/name"``, ``"tag"``); digests and ports handled."""
    if "@" in image:
        repo, _, digest = image.partition("@")
        return repo, digest
    repo, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return image, "latest"
    return repo, tag


def explain(error: BaseException) -> str:
    """A one-line reason from a docker SDK error (the engine's explanation if it gave one)."""
    explanation = getattr(error, "explanation", None)
    text = str(explanation or error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]
