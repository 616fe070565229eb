"""Message framing, signing and connection files for the hub <-> worker protocol.

A pure module: no sockets, no PHOEBE. The hub (``phoebe_spawner.channels``) and the
worker (``phoebe_kernel_worker.worker``) both import it, so the wire format lives in
exactly one place.

Wire format (one ZMQ multipart message, modelled on Jupyter's)::

    [routing ids...] DELIM  signature  header  content

* ``header`` is a JSON object: ``msg_id``, ``msg_type``, ``session``, ``date`` (unix
  seconds), ``parent_id`` (the ``msg_id`` a reply answers, or null), ``version`` and
  optional extra fields (``status`` on replies).
* ``content`` is opaque bytes (JSON in practice); the protocol never parses it, so a
  large result travels from the worker to the HTTP client without being re-encoded.
* ``signature`` is the hex HMAC-SHA256 over the length-prefixed header and content
  frames with the per-session key. Receivers compare it in constant time, reject
  messages for another session, messages older than ``max_age`` seconds and replays
  (a bounded history of seen signatures).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

PROTOCOL_VERSION = 1
DELIM = b"<PSK|MSG>"
SIGNATURE_SCHEME = "hmac-sha256"
KEY_BYTES = 32
MAX_HEADER_BYTES = 4096

# Channels a worker serves.
CHANNELS = ("shell", "control", "iopub")

# Control-channel message types (answered while a command runs).
STATUS_REQUEST = "status_request"
INTERRUPT_REQUEST = "interrupt_request"
SHUTDOWN_REQUEST = "shutdown_request"
#: Hand a pooled (not yet assigned) worker to its session: ``{"session_dir": path}``.
BIND_REQUEST = "bind_request"
# Shell-channel message type carrying one PHOEBE command.
EXECUTE_REQUEST = "execute_request"


class ProtocolError(Exception):
    """A message that must be dropped: malformed, unsigned, mis-signed, stale or replayed."""


@dataclass(slots=True)
class Message:
    """One decoded, verified message."""

    msg_id: str
    msg_type: str
    session: str
    date: float
    parent_id: str | None
    content: bytes
    header: dict[str, Any] = field(default_factory=dict)

    def json(self) -> Any:
        """Parse the content as JSON (raises ``orjson.JSONDecodeError``)."""
        return orjson.loads(self.content) if self.content else {}

    def reply_type(self) -> str:
        """The msg_type of the reply to this message (``x_request`` -> ``x_reply``)."""
        base = self.msg_type.removesuffix("_request")
        return f"{base}_reply"


def new_key() -> bytes:
    """A fresh random signing key (hex-encoded bytes, as stored in connection files)."""
    return secrets.token_hex(KEY_BYTES).encode()


def derive_session_key(secret: bytes, session_id: str) -> bytes:
    """The signing key of one session, derived from the hub's secret.

    The hub never stores per-session keys: after a restart it derives the same key
    again from its persisted secret and the session id, and can command workers
    that outlived it.
    """
    digest = hmac.new(secret, b"phoebe-spawner session key v1:" + session_id.encode(), "sha256")
    return digest.hexdigest().encode()


class Signer:
    """Signs outgoing and verifies incoming messages for one session.

    One instance per socket owner (each side of each session). Not thread-safe: a
    thread that owns a socket owns its signer.
    """

    def __init__(
        self,
        key: bytes,
        session: str,
        *,
        max_age: float = 300.0,
        history: int = 65536,
    ) -> None:
        if not key:
            raise ValueError("a signing key is required")
        self._key = key
        self._mac = hmac.new(key, digestmod=hashlib.sha256)  # keyed once, copied per message
        # message ids: a random prefix per signer and a counter (unique without a system
        # call per message, unlike uuid4)
        self._id_prefix = uuid.uuid4().hex[:16]
        self._ids = itertools.count(1)
        self.session = session
        self.max_age = max_age
        self._history: OrderedDict[bytes, None] = OrderedDict()
        self._history_size = history

    def sign(self, header: bytes, content: bytes) -> bytes:
        """Hex HMAC-SHA256 over the length-prefixed frames."""
        mac = self._mac.copy()
        for frame in (header, content):
            mac.update(len(frame).to_bytes(8, "big"))
            mac.update(frame)
        return mac.hexdigest().encode()

    def serialize(
        self,
        msg_type: str,
        content: bytes = b"{}",
        *,
        parent_id: str | None = None,
        msg_id: str | None = None,
        **extra: Any,
    ) -> tuple[str, list[bytes]]:
        """Build the frames of one message; returns ``(msg_id, frames)``.

        ``extra`` header fields must be JSON-able (e.g. ``status="ok"`` on replies).
        """
        msg_id = msg_id or f"{self._id_prefix}{next(self._ids):016x}"
        header = {
            "msg_id": msg_id,
            "msg_type": msg_type,
            "session": self.session,
            "date": time.time(),
            "parent_id": parent_id,
            "version": PROTOCOL_VERSION,
            **extra,
        }
        hbytes = orjson.dumps(header)
        return msg_id, [DELIM, self.sign(hbytes, content), hbytes, content]

    def deserialize(self, frames: list[bytes]) -> tuple[list[bytes], Message]:
        """Split routing ids from a message, verify it, and decode its header.

        Raises :class:`ProtocolError` for anything that is not a fresh message
        signed with this session's key.
        """
        try:
            idx = frames.index(DELIM)
        except ValueError:
            raise ProtocolError("missing delimiter frame") from None
        ids, rest = frames[:idx], frames[idx + 1 :]
        if len(rest) != 3:
            raise ProtocolError(f"expected 3 frames after the delimiter, got {len(rest)}")
        signature, hbytes, content = rest
        if len(hbytes) > MAX_HEADER_BYTES:
            raise ProtocolError("header too large")
        if not hmac.compare_digest(signature, self.sign(hbytes, content)):
            raise ProtocolError("invalid signature")
        if signature in self._history:
            raise ProtocolError("replayed message")
        try:
            header = orjson.loads(hbytes)
        except orjson.JSONDecodeError:
            raise ProtocolError("header is not JSON") from None
        if not isinstance(header, dict):
            raise ProtocolError("header is not an object")
        msg = _message_from_header(header, content)
        if msg.session != self.session:
            raise ProtocolError("message for another session")
        if abs(time.time() - msg.date) > self.max_age:
            raise ProtocolError("stale message")
        self._remember(signature)
        return ids, msg

    def _remember(self, signature: bytes) -> None:
        self._history[signature] = None
        if len(self._history) > self._history_size:
            self._history.popitem(last=False)


def _message_from_header(header: dict[str, Any], content: bytes) -> Message:
    try:
        msg_id = header["msg_id"]
        msg_type = header["msg_type"]
        session = header["session"]
        date = float(header["date"])
        parent_id = header.get("parent_id")
    except (KeyError, TypeError, ValueError):
        raise ProtocolError("header misses required fields") from None
    if not (isinstance(msg_id, str) and isinstance(msg_type, str) and isinstance(session, str)):
        raise ProtocolError("header fields have the wrong types")
    if parent_id is not None and not isinstance(parent_id, str):
        raise ProtocolError("parent_id has the wrong type")
    return Message(msg_id, msg_type, session, date, parent_id, content, header)


# --- connection files --------------------------------------------------------------


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
    #: cost caps overriding the worker's defaults (see phoebe_kernel_worker.limits)
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


#: What the hub and the worker answer for a body that names its command twice.
DUPLICATE_COMMAND_ERROR = "request names 'command' more than once"


def has_duplicate_command(body: bytes) -> bool:
    """Whether the top-level JSON object in ``body`` has more than one ``command`` key.

    JSON parsers disagree on duplicate keys (the hub's fast path reads the first, orjson
    keeps the last), so such a body could run one command while being logged, timed and
    rate-limited as another; the hub (:meth:`BaseHandler.command_request`) and the worker
    refuse it.  Cheap for ordinary bodies: only one naming ``"command"`` twice or using
    ``\\u`` escapes (which could spell it) is parsed again, with the top-level pairs kept.
    Returns False for a body that is not valid JSON (the callers' parser reports that).
    """
    if body.count(b'"command"') < 2 and b"\\u" not in body:
        return False
    last: list[list[tuple[str, Any]]] = [[]]

    def keep_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        last[0] = pairs  # objects close inner-first: the top level is the last one
        return {}

    try:
        json.loads(body, object_pairs_hook=keep_pairs)
    except (ValueError, RecursionError):
        return False
    return sum(1 for key, _ in last[0] if key == "command") > 1
