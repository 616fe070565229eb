"""Message framing and signing: the wire format of the hub <-> worker protocol.

Pure (no sockets, no PHOEBE). The hub's channels (``phoebe_spawner.channels``) and the
worker's loop (``phoebe_kernel_worker.worker``) both build and check every message
with :class:`Signer`, so the wire format lives in exactly one place.

Wire format (one ZMQ multipart message, modelled on Jupyter's)::

    [routing ids...] DELIM  signature  header  content  [buffer ...]

* ``header`` is a JSON object: ``msg_id``, ``msg_type``, ``session``, ``date`` (unix
  seconds), ``parent_id`` (the ``msg_id`` a reply answers, or null), ``version`` and
  optional extra fields (``status`` on replies).
* ``content`` is opaque bytes (JSON in practice); the protocol never parses it, so a
  large result travels from the worker to the HTTP client without being re-encoded.
* ``buffer`` frames (at most :data:`MAX_BUFFERS`, usually none) carry a command's
  numpy arrays as raw bytes beside its JSON; the header describes them
  (:mod:`.frames`). Unlike Jupyter's, they are signed like the rest.
* ``signature`` is the hex HMAC-SHA256 over the length-prefixed header, content and
  buffer frames with the per-session key (with no buffers: over header and content,
  as before buffers existed). Receivers compare it in constant time, reject messages
  for another session, messages older than ``max_age`` seconds and replays (a bounded
  history of seen signatures).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from .frames import MAX_BUFFERS

#: a frame: bytes, or any bytes-like object (a slice of a request body, a numpy buffer)
Buffer = bytes | bytearray | memoryview

__all__ = [
    "BIND_REQUEST",
    "CHANNELS",
    "DELIM",
    "EXECUTE_REQUEST",
    "INTERRUPT_REQUEST",
    "KEY_BYTES",
    "MAX_HEADER_BYTES",
    "PROTOCOL_VERSION",
    "SHUTDOWN_REQUEST",
    "SIGNATURE_SCHEME",
    "STATUS_REQUEST",
    "Message",
    "ProtocolError",
    "Signer",
    "derive_session_key",
    "new_key",
]

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
    #: the buffer frames after the content (raw bytes; described by the header)
    buffers: list[bytes] = field(default_factory=list)

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

    def sign(self, header: bytes, content: Buffer, buffers: Sequence[Buffer] = ()) -> bytes:
        """Hex HMAC-SHA256 over the length-prefixed frames (header, content, buffers)."""
        mac = self._mac.copy()
        for frame in (header, content, *buffers):
            size = len(frame) if type(frame) is bytes else memoryview(frame).nbytes
            mac.update(size.to_bytes(8, "big"))
            mac.update(frame)
        return mac.hexdigest().encode()

    def serialize(
        self,
        msg_type: str,
        content: Buffer = b"{}",
        *,
        parent_id: str | None = None,
        msg_id: str | None = None,
        buffers: Sequence[Buffer] = (),
        **extra: Any,
    ) -> tuple[str, list[Buffer]]:
        """Build the frames of one message; returns ``(msg_id, frames)``.

        ``extra`` header fields must be JSON-able (e.g. ``status="ok"`` on replies).
        ``buffers`` (bytes-like, at most :data:`MAX_BUFFERS`) become frames after the
        content, covered by the signature; the caller describes them in a header field.
        """
        if len(buffers) > MAX_BUFFERS:
            raise ValueError(f"at most {MAX_BUFFERS} buffers per message")
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
        return msg_id, [DELIM, self.sign(hbytes, content, buffers), hbytes, content, *buffers]

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
        if not 3 <= len(rest) <= 3 + MAX_BUFFERS:
            raise ProtocolError(
                f"expected 3 to {3 + MAX_BUFFERS} frames after the delimiter, got {len(rest)}"
            )
        signature, hbytes, content, *buffers = rest
        if len(hbytes) > MAX_HEADER_BYTES:
            raise ProtocolError("header too large")
        if not hmac.compare_digest(signature, self.sign(hbytes, content, buffers)):
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
        msg.buffers = buffers
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
