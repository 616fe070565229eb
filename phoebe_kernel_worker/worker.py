"""The worker process: serves one PHOEBE session over three signed ZMQ channels.

Started by a spawner as ``python -m phoebe_kernel_worker --connection-file F`` (see
``__main__``). Threads and channels:

* the **main thread** owns the *shell* ROUTER socket and the *iopub* XPUB socket and
  runs one command at a time (PHOEBE is not thread-safe); it tracks the iopub
  subscriptions, so a message no subscriber wants is never even built;
* a **control thread** owns the *control* ROUTER socket and answers ``status``,
  ``interrupt`` and ``shutdown`` requests while a command runs.

Interrupts are delivered as SIGINT to the main thread and turned into
``KeyboardInterrupt`` only while the targeted command is still the one running, so a
late interrupt can never hit the next command. A SIGINT from outside interrupts a
running command, or ends an idle worker (like Ctrl-C). SIGTERM ends the worker.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import resource
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import orjson
import zmq

from . import progress, protocol
from .memory import process_tree_memory_mib
from .progress import LineTee
from .protocol import ConnectionInfo, Message, ProtocolError, Signer
from .protocol.exits import out_of_memory
from .protocol.frames import ACCEPT_FIELD
from .protocol.frames import FEATURE as FRAMES_FEATURE
from .protocol.frames import HEADER_FIELD as BUFFERS_FIELD
from .protocol.frames import MIN_REPLY_ELEMENTS as MIN_REPLY
from .protocol.sockets import readable, send_frames
from .wakeup import WakePipe

log = logging.getLogger("phoebe_kernel_worker")

#: how often a running command looks for new iopub subscriptions (seconds)
SUBSCRIPTION_CHECK = 0.05
MAX_MESSAGE_BYTES = 512 * 1024 * 1024
MAX_LOGGED_REJECTIONS = 20


class NoFreePort(Exception):
    """Every port of the configured range is taken."""


class CommandSession(Protocol):
    """What the worker needs of a session object (``commands.PhoebeSession`` in production)."""

    def dispatch(self, command: str, kwargs: dict[str, Any]) -> Any: ...


SessionFactory = Callable[[ConnectionInfo], CommandSession]
Dumps = Callable[[Any], bytes]


class KernelWorker:
    """One worker process: binds its channels, reports readiness, serves until told to stop."""

    def __init__(
        self,
        info: ConnectionInfo,
        session: CommandSession,
        *,
        dumps: Dumps,
    ) -> None:
        self.info = info
        self.session = session
        self._dumps = dumps
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._current: tuple[str, str, float] | None = None  # (msg_id, command, start)
        self._pending_interrupt: str | None = None
        self._early_interrupts: deque[str] = deque(maxlen=256)
        self._commands_done = 0
        self._rejected = 0
        self.ctx = zmq.Context()
        self.shell = self._socket(zmq.ROUTER)
        self.control = self._socket(zmq.ROUTER)
        self.iopub = self._socket(zmq.XPUB)
        #: iopub topic prefixes somebody subscribes to (XPUB tells us: once per topic)
        self._topics: set[bytes] = set()
        self._subscriptions_read = 0.0
        self.endpoints: dict[str, str] = {}
        #: wake-up pipes of the shell (main) and control threads: an idle worker blocks
        #: in a poll with no timeout (a thousand idle workers cost the machine nothing),
        #: and :meth:`_request_stop` (or a signal, for the main thread) writes to them
        self._wake = WakePipe()
        self._control_wake = WakePipe()

    def _socket(self, kind: int) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        return sock

    # --- start-up ---------------------------------------------------------------

    def bind(self) -> dict[str, str]:
        """Bind the three channels where the connection info says; returns the endpoints."""
        for name, sock in (("shell", self.shell), ("control", self.control), ("iopub", self.iopub)):
            self.endpoints[name] = self._bind_one(name, sock)
        return self.endpoints

    def _bind_one(self, name: str, sock: zmq.Socket[bytes]) -> str:
        info = self.info
        if info.curve_secret_key:
            # CurveZMQ server: only clients that know our public key can even connect
            secret = info.curve_secret_key.encode()
            sock.curve_secretkey = secret
            sock.curve_publickey = zmq.curve_public(secret)
            sock.curve_server = True
        if info.transport == "ipc":
            base = info.ipc_dir or info.session_dir
            url = f"ipc://{base}/{name}"
            sock.bind(url)
            return url
        addr = f"tcp://{info.ip}"
        if info.port_range:
            lo, hi = info.port_range
            start = random.randrange(lo, hi) if hi > lo else lo  # noqa: S311 - spreads load only
            for port in [*range(start, hi), *range(lo, start)]:
                try:
                    sock.bind(f"{addr}:{port}")
                    return f"{addr}:{port}"
                except zmq.ZMQError as e:
                    if e.errno != errno.EADDRINUSE:
                        raise
            raise NoFreePort(f"no free port in {lo}-{hi - 1} for the {name} channel")
        sock.bind(f"{addr}:0")
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def install_signal_handlers(self) -> None:
        """SIGINT interrupts (or ends an idle worker); SIGTERM ends the worker."""
        signal.signal(signal.SIGINT, self._on_sigint)
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigint(self, signum: int, frame: object) -> None:
        with self._lock:
            target, self._pending_interrupt = self._pending_interrupt, None
            current = self._current[0] if self._current else None
        if target is not None:
            if current == target:
                raise KeyboardInterrupt
            return  # a late interrupt for a command that already finished
        if current is not None:
            raise KeyboardInterrupt
        self._request_stop()

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self._request_stop()
        raise SystemExit(0)

    def _request_stop(self) -> None:
        """End the serve loop: set the flag and wake both threads from their polls."""
        self._stop.set()
        self._wake.wake()
        self._control_wake.wake()

    # --- main loop ----------------------------------------------------------------

    def serve(self) -> None:
        """Serve the shell channel on this thread until a shutdown; closes everything.

        Between commands the thread sleeps in one poll over the shell socket, the iopub
        (un)subscriptions and its wake-up pipe, with no timeout: an idle worker wakes for
        nothing (a timeout of 100 ms on this thread and the control thread cost 100 idle
        workers 14 % of a core). A signal wakes it through the pipe
        (``signal.set_wakeup_fd``), a shutdown on the control thread by writing to it.
        """
        control_thread = threading.Thread(
            target=self._control_loop, name="phoebe-worker-control", daemon=True
        )
        control_thread.start()
        signer = Signer(self.info.key, self.info.session_id)
        self._iopub_signer = Signer(self.info.key, self.info.session_id)
        poller = zmq.Poller()
        poller.register(self.shell, zmq.POLLIN)
        poller.register(self.iopub, zmq.POLLIN)
        poller.register(self._wake.read_fd, zmq.POLLIN)
        wakeup_fd = self._wake.on_signals()
        try:
            while not self._stop.is_set():
                try:
                    ready = dict(poller.poll())
                    if self._wake.read_fd in ready:
                        self._wake.drain()
                    if self.iopub in ready:
                        self._read_subscriptions()
                    if self.shell in ready:
                        try:
                            frames = self.shell.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            continue
                        self._handle_shell(signer, frames)
                except KeyboardInterrupt:
                    continue  # an interrupt that arrived between commands
        finally:
            self._request_stop()
            if wakeup_fd is not None:
                signal.set_wakeup_fd(wakeup_fd)
            control_thread.join(timeout=2)
            self.close()

    def _handle_shell(self, signer: Signer, frames: list[bytes]) -> None:
        try:
            ids, msg = signer.deserialize(frames)
        except ProtocolError as e:
            self._reject("shell", e)
            return
        if msg.msg_type != protocol.EXECUTE_REQUEST:
            body = {"success": False, "error": f"unknown message type {msg.msg_type!r}"}
            self._reply(signer, self.shell, ids, msg, orjson.dumps(body), status="error")
            return
        try:
            request = msg.json()
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            body = {"success": False, "error": "request must be an object with a 'command'"}
            self._reply(signer, self.shell, ids, msg, orjson.dumps(body), status="bad_request")
            return
        if protocol.has_duplicate_command(msg.content):  # which one would run is ambiguous
            body = {"success": False, "error": protocol.DUPLICATE_COMMAND_ERROR}
            self._reply(signer, self.shell, ids, msg, orjson.dumps(body), status="bad_request")
            return
        if msg.buffers or BUFFERS_FIELD in msg.header:  # arrays sent as typed buffers
            # imported here: numpy starts threads, and the wall goes up before any thread
            from .buffers import FramesError, attach_buffers

            try:
                request = attach_buffers(request, msg.header, msg.buffers)
            except FramesError as e:
                body = {"success": False, "error": str(e)}
                self._reply(signer, self.shell, ids, msg, orjson.dumps(body), status="bad_request")
                return
        command = request.pop("command")
        # the result's arrays as buffers, when the request asks for them
        buffers: list[Any] | None = [] if msg.header.get(ACCEPT_FIELD) is True else None
        payload, status = self._run(msg.msg_id, command, request, buffers)
        extra = {BUFFERS_FIELD: [_spec(a) for a in buffers]} if buffers else {}
        self._reply(
            signer, self.shell, ids, msg, payload, buffers, status=status, command=command, **extra
        )

    def _run(
        self, msg_id: str, command: str, kwargs: dict[str, Any], buffers: list[Any] | None = None
    ) -> tuple[bytes, str]:
        """Run one command; returns the reply content and its status (ok|error|interrupted).
        With ``buffers`` (a list), the result's large arrays go there, not in the JSON.

        While it runs, PHOEBE's progress and the command's output lines are published on
        iopub with ``parent_id`` = the command's msg_id.
        """
        start = time.monotonic()
        self._publish("status", {"execution_state": "busy", "command": command}, msg_id)
        tees = [
            LineTee(
                sys.stdout, "stdout", lambda name, line: self._publish_line(msg_id, name, line)
            ),
            LineTee(
                sys.stderr, "stderr", lambda name, line: self._publish_line(msg_id, name, line)
            ),
        ]
        try:
            if not self._claim(msg_id, command, start):
                raise KeyboardInterrupt  # interrupted before it started: never run it
            progress.set_sink(
                lambda fraction, message: self._publish_progress(
                    msg_id, fraction, message or command
                )
            )
            sys.stdout, sys.stderr = tees  # type: ignore[assignment]
            try:
                result = self.session.dispatch(command, kwargs)
                payload, status = self._dump_result(result, buffers), "ok"
            finally:
                sys.stdout, sys.stderr = tees[0]._stream, tees[1]._stream
                progress.set_sink(None)
                with self._lock:
                    self._current = None
                for tee in tees:
                    tee.finish()
        except KeyboardInterrupt:
            payload, status = self._error_payload("Interrupted", None), "interrupted"
        except MemoryError:
            # RLIMIT_AS refused an allocation: what the command built is freed by now
            # and the worker goes on serving its session
            log.warning("command %s ran out of memory", command)
            payload, status = self._error_payload(_memory_message(), None), "error"
        except Exception as e:
            log.info("command %s raised %s", command, type(e).__name__)
            message = str(e) or type(e).__name__
            payload, status = self._error_payload(message, traceback.format_exc()), "error"
        self._commands_done += 1
        self._publish("status", {"execution_state": "idle", "command": command}, msg_id)
        return payload, status

    def _dump_result(self, result: Any, buffers: list[Any] | None) -> bytes:
        """The reply content of a result; with ``buffers`` its large numeric arrays are
        appended there instead (:func:`.serialize.dumps_with_buffers`)."""
        if buffers is None:
            return self._dumps({"success": True, "result": result})
        from .serialize import dumps_with_buffers

        content, arrays = dumps_with_buffers({"success": True, "result": result}, MIN_REPLY)
        buffers.extend(arrays)
        return content

    def _publish_progress(self, msg_id: str, fraction: float, message: str) -> None:
        self._publish("progress", {"fraction": round(fraction, 6), "message": message}, msg_id)

    def _publish_line(self, msg_id: str, name: str, line: str) -> None:
        self._publish("stream", {"name": name, "text": line}, msg_id)

    def _error_payload(self, message: str, tb: str | None) -> bytes:
        body: dict[str, Any] = {"success": False, "error": message}
        if tb and self.info.debug:
            body["traceback"] = tb
        return orjson.dumps(body)

    def _reply(
        self,
        signer: Signer,
        sock: zmq.Socket[bytes],
        ids: list[bytes],
        msg: Message,
        content: bytes,
        buffers: list[Any] | None = None,
        **extra: Any,
    ) -> None:
        _, frames = signer.serialize(
            msg.reply_type(), content, parent_id=msg.msg_id, buffers=buffers or (), **extra
        )
        send_frames(sock, [*ids, *frames], copy=len(content) < 65536 and not buffers)

    def _read_subscriptions(self) -> None:
        """Take in iopub (un)subscriptions (main thread): ``\x01topic`` / ``\x00topic``."""
        self._subscriptions_read = time.monotonic()
        while readable(self.iopub):
            event = self.iopub.recv()
            if event[:1] == b"\x01":
                self._topics.add(event[1:])
            elif event[:1] == b"\x00":
                self._topics.discard(event[1:])

    def _wanted(self, topic: bytes) -> bool:
        """Whether an iopub subscriber wants ``topic``.

        The serve loop reads (un)subscriptions between commands; during a command they
        are looked at here, at most every ``SUBSCRIPTION_CHECK`` seconds (the look is a
        ZMQ call, and ``status`` is published twice per command).
        """
        if time.monotonic() - self._subscriptions_read > SUBSCRIPTION_CHECK:
            self._read_subscriptions()  # e.g. a subscriber that joined during a long command
        return any(topic.startswith(prefix) for prefix in self._topics)

    def _publish(
        self, msg_type: str, content: dict[str, Any], parent_id: str | None = None
    ) -> None:
        """Publish on iopub (main thread only: the XPUB socket belongs to it); a message
        no subscriber wants (e.g. busy/idle ``status`` to a hub that follows only
        progress) is not built at all."""
        if threading.current_thread() is not threading.main_thread():
            return
        topic = msg_type.encode()
        if not self._wanted(topic):
            return
        _, frames = self._iopub_signer.serialize(
            msg_type, orjson.dumps(content), parent_id=parent_id
        )
        # the msg_type leads as a topic (a routing id to the protocol): subscribers filter
        # on it, and ZMQ drops unsubscribed topics here, before they cross the wire
        with contextlib.suppress(zmq.Again):  # no subscriber keeping up: drop, never block
            send_frames(self.iopub, [topic, *frames], flags=zmq.NOBLOCK)

    def _reject(self, channel: str, error: Exception) -> None:
        self._rejected += 1
        if self._rejected <= MAX_LOGGED_REJECTIONS:
            log.warning("rejected a message on %s: %s", channel, error)

    # --- control thread -------------------------------------------------------------

    def _control_loop(self) -> None:
        signer = Signer(self.info.key, self.info.session_id)
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(self._control_wake.read_fd, zmq.POLLIN)
        while not self._stop.is_set():
            if self.control not in dict(poller.poll()):  # no timeout: woken to stop
                continue
            try:
                frames = self.control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                continue
            try:
                ids, msg = signer.deserialize(frames)
            except ProtocolError as e:
                self._reject("control", e)
                continue
            content = self._handle_control(msg)
            self._reply(signer, self.control, ids, msg, orjson.dumps(content), status="ok")

    def _handle_control(self, msg: Message) -> dict[str, Any]:
        if msg.msg_type == protocol.STATUS_REQUEST:
            return self.status()
        if msg.msg_type == protocol.INTERRUPT_REQUEST:
            try:
                target = msg.json().get("msg_id")
            except (orjson.JSONDecodeError, AttributeError):
                target = None
            return {"interrupted": self.interrupt(target)}
        if msg.msg_type == protocol.BIND_REQUEST:
            try:
                content = msg.json()
            except orjson.JSONDecodeError:
                content = None
            return self.bind_session(content)
        if msg.msg_type == protocol.SHUTDOWN_REQUEST:
            self.interrupt(None)
            self._request_stop()
            return {"shutting_down": True}
        return {"error": f"unknown control message {msg.msg_type!r}"}

    def interrupt(self, target: str | None) -> bool:
        """Interrupt the running command (only if it is ``target`` when one is given).

        An interrupt for a command that has not started yet (still queued in the shell
        socket) is remembered, and that command is answered "Interrupted" without
        running; so an interrupt sent right after its command can never be lost.
        """
        with self._lock:
            if self._current is None or (target is not None and self._current[0] != target):
                if target is not None:
                    self._early_interrupts.append(target)
                return False
            self._pending_interrupt = self._current[0]
        os.kill(os.getpid(), signal.SIGINT)
        return True

    def bind_session(self, content: Any) -> dict[str, Any]:
        """Hand a warm-pool worker to its session (control thread; the hub calls it once).

        The worker was started, with its session id and key already, before anyone owned
        it, in a neutral directory; this moves it into the session's own directory. It
        has never run a command, so nothing of anyone else can be in it. Refused for a
        worker that is not pooled or already bound, and while a command runs.
        """
        if not isinstance(content, dict) or not isinstance(content.get("session_dir"), str):
            return {"bound": False, "error": "a bind request names the 'session_dir'"}
        with self._lock:
            if not self.info.pooled or self._current is not None:
                return {"bound": False, "error": "this worker is not an unassigned pool worker"}
            self.info.pooled = False
        session_dir = content["session_dir"]
        try:
            # the hub renamed our directory to the session's (a walled worker could
            # neither reach nor make that path): we are there already
            if not content.get("moved"):
                os.makedirs(session_dir, mode=0o700, exist_ok=True)
                os.chdir(session_dir)
        except OSError as e:
            return {"bound": False, "error": f"cannot use the session directory: {e.strerror}"}
        if os.environ.get("TMPDIR") == self.info.session_dir and os.access(session_dir, os.W_OK):
            os.environ["TMPDIR"] = session_dir
            tempfile.tempdir = None
        self.info.session_dir = session_dir
        log.info("bound to its session; working in %s", session_dir)
        return {"bound": True}

    def _claim(self, msg_id: str, command: str, start: float) -> bool:
        """Make ``msg_id`` the running command, unless an interrupt for it came first.

        One step under the lock that :meth:`interrupt` takes too, so an interrupt either
        finds the command running (and signals it) or is remembered before the command
        is claimed (and stops it here): it can never fall between the two.
        """
        with self._lock:
            if msg_id in self._early_interrupts:
                self._early_interrupts.remove(msg_id)
                return False
            self._current = (msg_id, command, start)
            return True

    def status(self) -> dict[str, Any]:
        """What the hub polls: busy/idle, the running command, memory of the process tree
        (``uss_mib``, ``pss_mib``, ``rss_mib``: see :func:`process_tree_memory_mib`), and
        the protocol ``features`` it takes (``frames``: buffers beside the JSON)."""
        with self._lock:
            current = self._current
        memory = process_tree_memory_mib()
        return {
            "state": "busy" if current else "idle",
            "command": current[1] if current else None,
            "msg_id": current[0] if current else None,
            "busy_for": time.monotonic() - current[2] if current else 0.0,
            "pid": os.getpid(),
            "uss_mib": memory["uss"],
            "pss_mib": memory["pss"],
            "rss_mib": memory["rss"],
            "uptime": time.monotonic() - self._started,
            "commands_done": self._commands_done,
            "features": [FRAMES_FEATURE],  # what this worker takes beyond plain JSON
        }

    def close(self) -> None:
        for sock in (self.shell, self.control, self.iopub):
            sock.close(linger=0)
        self.ctx.term()
        self._wake.close()
        self._control_wake.close()


def _spec(array: Any) -> dict[str, Any]:
    """The header description of one reply buffer (a numpy array)."""
    return {"dtype": array.dtype.str, "shape": list(array.shape)}


def _memory_message() -> str:
    """The reply to a command that hit the worker's address-space limit."""
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    return (
        out_of_memory(None if limit == resource.RLIM_INFINITY else limit)
        + ": the command needed more memory than this worker may use; the session goes on"
    )
