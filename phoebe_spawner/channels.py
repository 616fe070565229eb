"""The hub side of the worker protocol: persistent async ZMQ channels per session.

One :class:`WorkerChannel` per running session, created by the session manager when
the worker is ready and closed when the session ends. It keeps one DEALER socket per
request channel (shell, control) and one SUB socket (iopub) for the life of the
session; replies are matched to requests by ``parent_id``, so any number of requests
can be outstanding and a reply that arrives after its request timed out is dropped.

Nothing here blocks the event loop. The sockets are plain (non-blocking) ZMQ sockets
whose notification descriptors the loop watches: a readable socket is drained in one
callback, with no future or task step per message, and a send is one non-blocking
call. This is the hub's hottest path (every command crosses it twice); it used to go
through ``zmq.asyncio``, which costs a future, a failed ``recv`` and a task wake-up per
message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import zmq

from phoebe_kernel_worker import protocol
from phoebe_kernel_worker.protocol import Message, ProtocolError, Signer
from phoebe_kernel_worker.protocol.frames import Buffers
from phoebe_kernel_worker.protocol.sockets import readable, send_frames

log = logging.getLogger(__name__)
MAX_LOGGED_REJECTIONS = 20
#: iopub topics the hub subscribes to: what its listeners use (job progress and output).
#: The worker's busy/idle ``status`` (two per command, used by nothing in the hub) is
#: then dropped by the worker's PUB socket and never crosses the wire. The delimiter
#: keeps messages of workers that publish without a topic frame.
IOPUB_TOPICS = (b"progress", b"stream", protocol.DELIM)
#: ...and those (from such workers) are dropped unread (the header is orjson output)
IGNORED_IOPUB = b'"msg_type":"status"'
#: messages one drain callback takes before it yields the loop (a flooding worker must
#: not starve the other sessions)
DRAIN_BATCH = 64


class ChannelError(Exception):
    """Base class of the errors a request on a channel can end with."""


class ChannelTimeout(ChannelError):
    """No reply within the timeout; ``msg_id`` names the request (to interrupt it)."""

    def __init__(self, msg_id: str, timeout: float) -> None:
        super().__init__(f"no reply within {timeout:g} s")
        self.msg_id = msg_id


class ChannelClosed(ChannelError):
    """The channel was closed (the session ended or its worker died) while waiting."""


class ChannelBusy(ChannelError):
    """The worker's queue for a channel is full (it stopped reading): nothing was sent."""


@dataclass(slots=True)
class Reply:
    """A verified reply: its header (``status``, ``command``...), raw content bytes and
    buffer frames (a result's arrays, when the request asked for them)."""

    header: dict[str, Any]
    content: bytes
    buffers: list[bytes] = field(default_factory=list)

    @property
    def status(self) -> str:
        return str(self.header.get("status", "ok"))

    def json(self) -> Any:
        return orjson.loads(self.content)


IOPubHandler = Callable[[Message], None]


@dataclass(frozen=True, slots=True)
class WorkerEndpoint:
    """How the hub reaches one worker: what ``Spawner.start()`` returns.

    The three ZMQ URLs the worker bound (``tcp://host:port``), and the worker's Z85
    CurveZMQ public key when its sockets are encrypted (a worker on another host; plain
    TCP otherwise). The base :class:`~phoebe_spawner.spawners.base.Spawner` keeps it in
    its state (:meth:`to_state`), so a restarted hub reconnects to a re-adopted worker.
    """

    shell: str
    control: str
    iopub: str
    curve_server_key: str | None = None

    @property
    def port(self) -> int | None:
        """The shell channel's port: the ``port`` API clients are shown."""
        tail = self.shell.rsplit(":", 1)[-1]
        return int(tail) if tail.isdigit() else None

    def url(self, channel: str) -> str:
        """The URL of ``channel`` (one of ``protocol.CHANNELS``)."""
        return str(getattr(self, channel))

    def to_state(self) -> dict[str, str]:
        """A JSON-able form, read back by :meth:`from_state`."""
        state = {"shell": self.shell, "control": self.control, "iopub": self.iopub}
        if self.curve_server_key:
            state["curve_server_key"] = self.curve_server_key
        return state

    @classmethod
    def from_state(cls, state: Any) -> WorkerEndpoint | None:
        """The endpoint :meth:`to_state` wrote, or None if ``state`` does not hold one."""
        if not isinstance(state, dict):
            return None
        try:
            urls = [str(state[ch]) for ch in protocol.CHANNELS]
        except KeyError:
            return None
        key = state.get("curve_server_key")
        shell, control, iopub = urls
        return cls(shell, control, iopub, str(key) if key else None)


class WorkerChannel:
    """Persistent, signed request/reply channels to one worker."""

    def __init__(
        self,
        ctx: zmq.Context[Any],
        session_id: str,
        key: bytes,
        endpoint: WorkerEndpoint,
    ) -> None:
        self.session_id = session_id
        self.endpoint = endpoint
        self._ctx = ctx
        self._key = key
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._sockets: dict[str, zmq.Socket[bytes]] = {}
        self._signers: dict[str, Signer] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._iopub_handlers: list[IOPubHandler] = []
        self._closed: BaseException | None = None
        self._rejected = 0
        #: what the worker takes beyond plain JSON (its last status reply's ``features``;
        #: ``frames``: buffers beside a command's JSON). Empty until a status request.
        self.features: frozenset[str] = frozenset()

    def connect(self) -> None:
        """Open the sockets and start watching them (call once, on the event loop)."""
        self._loop = loop = asyncio.get_running_loop()
        for name, kind in (("shell", zmq.DEALER), ("control", zmq.DEALER), ("iopub", zmq.SUB)):
            # a plain socket whatever the context (which tracks it, so destroy closes it)
            sock: zmq.Socket[bytes] = self._ctx.socket(kind, socket_class=zmq.Socket)
            sock.setsockopt(zmq.LINGER, 0)
            if kind == zmq.SUB:
                for topic in IOPUB_TOPICS:
                    sock.setsockopt(zmq.SUBSCRIBE, topic)
            server_key = self.endpoint.curve_server_key
            if server_key:
                # CurveZMQ client with a throw-away key pair: the worker authenticates
                # messages by their HMAC signature, the curve layer only encrypts
                public, secret = zmq.curve_keypair()
                sock.curve_serverkey = server_key.encode()
                sock.curve_publickey = public
                sock.curve_secretkey = secret
            sock.connect(self.endpoint.url(name))
            self._sockets[name] = sock
            self._signers[name] = Signer(self._key, self.session_id)
            loop.add_reader(sock.FD, self._drain, name)

    def add_iopub_handler(self, handler: IOPubHandler) -> None:
        """Call ``handler(message)`` for every verified iopub message (progress, logs, status)."""
        self._iopub_handlers.append(handler)

    # --- requests ---------------------------------------------------------------------

    async def execute(
        self,
        body: bytes,
        *,
        timeout: float | None,
        on_sent: Callable[[str], None] | None = None,
        buffers: Buffers | None = None,
    ) -> Reply:
        """Run one command (``body`` is the JSON request) on the shell channel.

        ``on_sent(msg_id)`` is called as soon as the request is sent, before the reply:
        iopub messages of the command carry that id as their ``parent_id``. ``buffers``
        (only to a worker whose :attr:`features` hold ``frames``) go as signed frames
        after the JSON, described in the header, without a copy; with ``reply_buffers``
        the reply's :attr:`Reply.buffers` may hold the result's arrays.
        """
        msg_id, fut = await self._send("shell", protocol.EXECUTE_REQUEST, body, buffers)
        if on_sent is not None:
            on_sent(msg_id)
        return await self._wait(msg_id, fut, timeout)

    async def control(
        self, msg_type: str, content: dict[str, Any] | None = None, *, timeout: float = 5.0
    ) -> dict[str, Any]:
        """One control request (status, interrupt, shutdown); returns the parsed reply."""
        body = orjson.dumps(content or {})
        msg_id, fut = await self._send("control", msg_type, body)
        reply = await self._wait(msg_id, fut, timeout)
        result = reply.json()
        if not isinstance(result, dict):
            raise ChannelError("malformed control reply")
        if msg_type == protocol.STATUS_REQUEST:
            features = result.get("features")
            if isinstance(features, list):
                self.features = frozenset(f for f in features if isinstance(f, str))
        return result

    async def _send(
        self, channel: str, msg_type: str, body: bytes, buffers: Buffers | None = None
    ) -> tuple[str, asyncio.Future[Reply]]:
        self._check_open()
        signer = self._signers[channel]
        copy = len(body) < 65536
        if buffers is None:
            msg_id, frames = signer.serialize(msg_type, body)
        else:
            extra = buffers.fields()
            msg_id, frames = signer.serialize(msg_type, body, buffers=buffers.data, **extra)
            copy = copy and not buffers.data  # buffers: slices of the request body, sent in place
        sock = self._sockets[channel]
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        try:
            # a DEALER queues up to its high-water mark even before the worker is
            # connected; a full queue means the worker stopped reading
            send_frames(sock, frames, flags=zmq.NOBLOCK, copy=copy)
        except zmq.Again:
            raise ChannelBusy(f"the worker is not taking {channel} requests") from None
        except zmq.ZMQError as e:
            raise ChannelClosed(f"channel closed: {e}") from None
        self._pending[msg_id] = fut
        self._after_send(channel, sock)
        return msg_id, fut

    def _after_send(self, channel: str, sock: zmq.Socket[bytes]) -> None:
        """ZMQ's descriptor is edge-triggered, and a send can consume the edge of a reply
        that is already queued: look once more, or that reply would wait for the next."""
        if readable(sock):
            assert self._loop is not None
            self._loop.call_soon(self._drain, channel)

    async def _wait(self, msg_id: str, fut: asyncio.Future[Reply], timeout: float | None) -> Reply:
        timer = None
        if timeout is not None:
            assert self._loop is not None
            timer = self._loop.call_later(timeout, _expire, fut, msg_id, timeout)
        try:
            return await fut
        finally:
            # on success the reader already removed it; on timeout or cancellation the
            # request is abandoned here, so a late reply finds nothing and is dropped
            if timer is not None:
                timer.cancel()
            self._pending.pop(msg_id, None)
            if not fut.done():
                fut.cancel()

    def _check_open(self) -> None:
        if self._closed is not None:
            raise ChannelClosed(str(self._closed) or "channel closed")

    # --- readers ------------------------------------------------------------------------

    def _drain(self, name: str) -> None:
        """Take what the socket holds (the loop calls this when its descriptor fires)."""
        sock = self._sockets.get(name)
        if sock is None:
            return  # closed meanwhile
        try:
            for _ in range(DRAIN_BATCH):
                if not readable(sock):
                    return
                self._on_message(name, sock.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            return
        except zmq.ZMQError:
            return  # the context is going away
        assert self._loop is not None
        self._loop.call_soon(self._drain, name)  # more waiting: after the others' turn

    def _on_message(self, name: str, frames: list[bytes]) -> None:
        if name == "iopub" and len(frames) >= 4 and IGNORED_IOPUB in frames[-2]:
            return  # busy/idle status: no hub listener uses it, skip the verification
        try:
            _, msg = self._signers[name].deserialize(frames)
        except ProtocolError as e:
            self._rejected += 1
            if self._rejected <= MAX_LOGGED_REJECTIONS:
                log.warning("session %s: dropped a %s message: %s", self.session_id, name, e)
            return
        if name == "iopub":
            for handler in list(self._iopub_handlers):
                try:
                    handler(msg)
                except Exception:
                    log.exception("iopub handler failed for session %s", self.session_id)
            return
        fut = self._pending.pop(msg.parent_id or "", None)
        if fut is not None and not fut.done():
            fut.set_result(Reply(msg.header, msg.content, msg.buffers))

    # --- teardown -----------------------------------------------------------------------

    def fail_pending(self, exc: BaseException) -> None:
        """End every outstanding request with ``exc`` (the worker died or the session ended)."""
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)

    async def close(self, reason: BaseException | None = None) -> None:
        """Fail what is pending, stop the readers and close the sockets. Idempotent."""
        if self._closed is not None:
            return
        self._closed = reason or ChannelClosed("session closed")
        self.fail_pending(self._closed)
        sockets, self._sockets = self._sockets, {}
        for sock in sockets.values():
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.FD)
            sock.close(linger=0)


def _expire(fut: asyncio.Future[Reply], msg_id: str, timeout: float) -> None:
    """The timer of a request: end its wait with a timeout unless the reply came first."""
    if not fut.done():
        fut.set_exception(ChannelTimeout(msg_id, timeout))
