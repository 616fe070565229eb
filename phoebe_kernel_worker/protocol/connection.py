"""Connection files and readiness reports: how a spawner and its worker meet.

The spawner (hub side, ``phoebe_spawner.spawners``) writes a :class:`ConnectionInfo`
into a 0600 file with :func:`write_connection_file`; the worker
(``phoebe_kernel_worker.__main__``) reads it with :func:`read_connection_file`, binds
its channels and answers with the readiness report of :func:`endpoints_to_json`, which
the spawner parses with :func:`endpoints_from_json`. :func:`derive_curve_secret` gives
both sides the same CurveZMQ key without storing it. Pure: no sockets, no PHOEBE.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from phoebe_kernel_worker.protocol.messages import CHANNELS, SIGNATURE_SCHEME

__all__ = [
    "ConnectionInfo",
    "derive_curve_secret",
    "endpoints_from_json",
    "endpoints_to_json",
    "read_connection_file",
    "write_connection_file",
]


@dataclass(slots=True)
class ConnectionInfo:
    """What a worker needs to serve one session: where to bind and how to sign.

    Written by the spawner into a 0600 file that only the worker reads; the key is
    never put in argv or in the environment.
    """

    session_id: str
    key: bytes
    session_dir: str
    transport: str = "tcp"
    ip: str = "127.0.0.1"
    port_range: tuple[int, int] | None = None
    ipc_dir: str | None = None
    debug: bool = False
    #: exit when the process that started the worker dies (hubs that do not re-adopt)
    exit_with_parent: bool = False
    #: a warm-pool worker: it accepts one ``bind_request`` that moves it to its session dir
    pooled: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    #: Z85 CurveZMQ secret key of the worker's sockets; None: no encryption (the default)
    curve_secret_key: str | None = None
    #: the OS wall the worker puts up around itself (local backends; see ``wall.py``)
    wall: dict[str, Any] | None = None
    #: cost caps overriding the worker's defaults (see :class:`protocol.limits.WorkerLimits`)
    limits: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "key": self.key.decode(),
            "signature_scheme": SIGNATURE_SCHEME,
            "session_dir": self.session_dir,
            "transport": self.transport,
            "ip": self.ip,
            "port_range": list(self.port_range) if self.port_range else None,
            "ipc_dir": self.ipc_dir,
            "debug": self.debug,
            "exit_with_parent": self.exit_with_parent,
            "pooled": self.pooled,
            "extra": self.extra,
            **({"curve_secret_key": self.curve_secret_key} if self.curve_secret_key else {}),
            **({"wall": self.wall} if self.wall else {}),
            **({"limits": dict(self.limits)} if self.limits else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConnectionInfo:
        if data.get("signature_scheme") != SIGNATURE_SCHEME:
            raise ValueError(f"unsupported signature scheme {data.get('signature_scheme')!r}")
        port_range = data.get("port_range")
        return cls(
            session_id=str(data["session_id"]),
            key=str(data["key"]).encode(),
            session_dir=str(data["session_dir"]),
            transport=str(data.get("transport", "tcp")),
            ip=str(data.get("ip", "127.0.0.1")),
            port_range=(int(port_range[0]), int(port_range[1])) if port_range else None,
            ipc_dir=data.get("ipc_dir"),
            debug=bool(data.get("debug", False)),
            exit_with_parent=bool(data.get("exit_with_parent", False)),
            pooled=bool(data.get("pooled", False)),
            extra=dict(data.get("extra") or {}),
            curve_secret_key=str(data["curve_secret_key"])
            if data.get("curve_secret_key")
            else None,
            wall=dict(data["wall"]) if isinstance(data.get("wall"), dict) else None,
            limits=dict(data.get("limits") or {}),
        )


def derive_curve_secret(key: bytes) -> str:
    """The Z85 CurveZMQ secret key of one session's worker, derived from its signing key.

    Like the signing key, it need not be stored: after a restart the hub derives it
    again (its public half, ``zmq.curve_public(secret)``, is what clients connect with).
    """
    from zmq.utils import z85  # a pure encoder: no sockets, no libzmq call

    digest = hmac.new(key, b"phoebe-spawner curve server key v1", "sha256").digest()
    return z85.encode(digest).decode()


def write_connection_file(path: str | os.PathLike[str], info: ConnectionInfo) -> Path:
    """Write ``info`` to ``path`` with mode 0600, atomically (never readable by others)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(info.to_dict()))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_connection_file(path: str | os.PathLike[str]) -> ConnectionInfo:
    """Read a connection file written by :func:`write_connection_file`."""
    return ConnectionInfo.from_dict(orjson.loads(Path(path).read_bytes()))


def endpoints_to_json(endpoints: dict[str, str], *, pid: int) -> bytes:
    """The readiness report a worker writes once its channels are bound."""
    return orjson.dumps({"endpoints": endpoints, "pid": pid}) + b"\n"


def endpoints_from_json(data: bytes) -> tuple[dict[str, str], int]:
    """Parse a readiness report; raises ``ValueError`` if it is incomplete."""
    try:
        parsed = orjson.loads(data)
        endpoints = {ch: str(parsed["endpoints"][ch]) for ch in CHANNELS}
        return endpoints, int(parsed["pid"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"malformed readiness report: {e}") from None
