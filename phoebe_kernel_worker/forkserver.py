"""The fork server: a template process that forks one ready-to-serve worker per request.

Started once per hub by :class:`phoebe_spawner.spawners.forkserver.ForkServer` as
``python -m phoebe_kernel_worker.forkserver --socket PATH --ready-fd N
[--prefork K] [--session-factory M:F]``. At start it runs the factory's ``prepare`` (for PHOEBE:
import it and build the default bundle, see :mod:`phoebe_kernel_worker.factories`),
freezes the garbage collector so children share those pages copy-on-write, listens on
a 0600 unix socket in the hub's private runtime directory and reports ``{"pid": N}`` on
the readiness fd. It is single-threaded and owns no ZMQ context: every child creates
its own after the fork.

One connection per worker; lines of JSON::

    hub    -> server  {"connection_file": P, "log_file": P, "env": {...}, "rlimits": {...}}
    child  -> hub     {"pid": N[, "spare": true]}      right after the fork (or hand-over)
    child  -> hub     {"endpoints": {...}, "pid": N}   once its channels are bound
    server -> hub     {"exit": status, "pid": N}       once the child exited (then EOF)

The signing key travels in the 0600 connection file, as for a cold worker, never in a
request. A request the server cannot honour is answered ``{"error": reason}``.

With ``--prefork K`` (``c.ForkServerSpawner.prefork``) the server keeps up to K spare
children forked ahead (:mod:`phoebe_kernel_worker.spares`): a request goes to a spare
when one is waiting (its ``{"pid"}`` line says ``"spare": true``), else to a child forked
on demand. Spares are refilled one per turn of the loop in which nothing was waiting
or pending and no request came in the last 50 ms, so a burst is served before any
refill. Requests are read as they arrive, never blocking the loop.

Only the hub (the server's parent, checked with ``SO_PEERCRED``) may connect. In the
child: its own session and process group (``setsid``), default signal handlers,
the server's descriptors closed, stdin from ``/dev/null`` (all of this a spare does
ahead), then, for the request: stdout/stderr to the worker's log, the environment
replaced by the request's, the ``rlimits`` set (``AS`` from ``mem_limit``,
``FSIZE`` from ``max_file_size``), ``random`` and numpy
reseeded from the OS, then the same :func:`~phoebe_kernel_worker.__main__.run_session`
a cold worker runs, which puts up the worker's wall (:mod:`phoebe_kernel_worker.wall`:
a root server's child drops to its own uid there). The server dies with the hub
(``PR_SET_PDEATHSIG``); children asked to exit with their parent (``exit_with_parent``)
then follow it, and spares always do.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import random
import resource
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import orjson

from . import protocol, spares
from .__main__ import (
    DEFAULT_FACTORY,
    _load_factory,
    exit_with_parent,
    run_session,
    setup_process,
)
from .spares import SparePool
from .worker import SessionFactory

log = logging.getLogger("phoebe_kernel_worker.forkserver")

MAX_REQUEST_BYTES = spares.MAX_REQUEST_BYTES
REQUEST_TIMEOUT = 5.0


class ForkServer:
    """The template's accept/fork/reap loop (single-threaded; one per hub).

    ``pending`` are the hub's connections whose request is still arriving (read without
    blocking the loop, each until its deadline); ``children`` the workers serving a hub
    connection (the template reports their exit on it); ``spares`` the children forked
    ahead and waiting for a request (up to ``prefork`` of them).
    """

    def __init__(self, listener: socket.socket, factory: SessionFactory, prefork: int = 0) -> None:
        self.listener = listener
        self.factory = factory
        self.pending: dict[socket.socket, tuple[bytes, float]] = {}  # data, deadline
        self.children: dict[int, socket.socket] = {}
        self.spares = SparePool(prefork)
        self._last_request = 0.0
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stop = False

    def serve(self) -> None:
        """Accept fork requests and reap children until SIGTERM or SIGINT."""
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.selector.register(self._wake_r, selectors.EVENT_READ)
        while not self._stop:
            events = self.selector.select(timeout=self._timeout())
            for key, _ in events:
                if key.fileobj is self.listener:
                    self._accept()
                elif key.fileobj == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                elif isinstance(key.fileobj, socket.socket):
                    self._receive(key.fileobj)
            self._expire()
            self._reap()
            if not events and not self._stop and self._wants_spare():
                self._add_spare()
        log.info("fork server stopping (%d children left running)", len(self.children))
        for conn in (*self.children.values(), *self.pending):
            conn.close()
        self.spares.drop()

    def _timeout(self) -> float:
        """How long the loop may wait for an event: until the next spare is due (none is
        while a request is pending) or the next pending request's deadline, at most a
        second."""
        now = time.monotonic()
        wake = now + 1.0
        due = self.spares.due(self._last_request)
        if due is not None and not self.pending:
            wake = min(wake, due)
        for _data, deadline in self.pending.values():
            wake = min(wake, deadline)
        return max(0.0, wake - now)

    def _on_stop(self, signum: int, frame: object) -> None:
        self._stop = True

    def _accept(self) -> None:
        """Take every waiting connection from the hub; their requests are read as they
        arrive (:meth:`_receive`), so a slow writer never holds up the others."""
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            self._last_request = time.monotonic()
            try:
                _check_peer(conn)
                conn.setblocking(False)
                self.selector.register(conn, selectors.EVENT_READ)
            except (OSError, ValueError) as e:
                _refuse(conn, e)
                continue
            self.pending[conn] = (b"", self._last_request + REQUEST_TIMEOUT)

    def _receive(self, conn: socket.socket) -> None:
        """Read what arrived of ``conn``'s request; once it is whole, serve it (a spare,
        else a fork on demand)."""
        data, deadline = self.pending[conn]
        try:
            chunk = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._done_reading(conn)
            _refuse(conn, e)
            return
        data += chunk
        if chunk and not data.endswith(b"\n") and len(data) <= MAX_REQUEST_BYTES:
            self.pending[conn] = (data, deadline)
            return
        self._done_reading(conn)
        try:
            request = _parse_request(data)
            pid = self.spares.hand_over(conn, data)
            if pid is None:
                self._fork(conn, request)
            else:
                self.children[pid] = conn
        except (OSError, ValueError) as e:
            _refuse(conn, e)

    def _done_reading(self, conn: socket.socket) -> None:
        if self.pending.pop(conn, None) is not None:
            self.selector.unregister(conn)
            conn.setblocking(True)

    def _expire(self) -> None:
        """Refuse the requests that did not arrive whole within ``REQUEST_TIMEOUT``."""
        now = time.monotonic()
        for conn in [c for c, (_data, deadline) in self.pending.items() if deadline <= now]:
            self._done_reading(conn)
            _refuse(conn, ValueError(f"the request did not arrive within {REQUEST_TIMEOUT:g} s"))

    def _fork(self, conn: socket.socket, request: dict[str, Any]) -> None:
        """Fork a child on demand for ``request`` (no spare was waiting)."""
        pid = self._spawn(lambda: self._become_worker(conn, request))
        self.children[pid] = conn
        log.debug("forked worker %d", pid)

    def _spawn(self, body: Callable[[], int]) -> int:
        """Fork; the child runs ``body`` and exits with its status, the parent gets the
        child's pid. Refused while the template has a thread besides this one."""
        threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
        if threads > 1:
            raise ValueError(f"the template has {threads} threads; forking it is unsafe")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns into this loop
            status = 1
            try:
                status = body()
            except SystemExit as e:
                status = e.code if isinstance(e.code, int) else 1
                if not isinstance(e.code, int) and e.code is not None:
                    print(e.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(status)
        return pid

    # --- spares -------------------------------------------------------------------

    def _wants_spare(self) -> bool:
        """Whether to fork a spare now (see :meth:`SparePool.due`); nothing may be pending."""
        due = self.spares.due(self._last_request)
        return due is not None and not self.pending and time.monotonic() >= due

    def _add_spare(self) -> None:
        """Fork one spare (called in a turn of the loop with nothing else to do)."""
        template = os.getpid()
        self.spares.add(
            lambda theirs, mine: self._spawn(lambda: self._run_spare(theirs, mine, template))
        )

    def _run_spare(self, sock: socket.socket, other: socket.socket, template: int) -> int:
        """In a spare: leave the template, wait for a request, become its worker."""
        other.close()
        self._leave_template()
        try:
            name = spares.die_with_template(template)
            conn, request = spares.wait_for_request(sock)
        except spares.TemplateGone:
            return 0
        spares.keep_alone(name)
        return self._take_request(conn, request, spare=True)

    # --- in the child ---------------------------------------------------------------

    def _become_worker(self, conn: socket.socket, request: dict[str, Any]) -> int:
        """Turn a child forked on demand into a worker for ``request``; its exit status."""
        self._leave_template()
        return self._take_request(conn, request)

    def _leave_template(self) -> None:
        """What every child does first, whatever the request: its own session, default
        signal handlers, none of the template's descriptors, stdin from /dev/null."""
        os.setsid()
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.selector.close()
        self.listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        for other in (*self.children.values(), *self.pending):
            other.close()
        self.children.clear()
        self.pending.clear()
        self.spares.forget()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)

    def _take_request(
        self, conn: socket.socket, request: dict[str, Any], *, spare: bool = False
    ) -> int:
        """Set the child up for ``request`` and run its session; its exit status."""
        _redirect_output(str(request.get("log_file") or os.devnull))
        _set_rlimits(request.get("rlimits"))
        env = request.get("env")
        if isinstance(env, dict):
            os.environ.clear()
            os.environ.update({str(k): str(v) for k, v in env.items()})
        _reseed()  # in this child, after its fork: no two children share a random state
        hello: dict[str, Any] = {"pid": os.getpid()}
        if spare:
            hello["spare"] = True
        conn.sendall(orjson.dumps(hello) + b"\n")
        info = protocol.read_connection_file(request["connection_file"])

        def report(data: bytes) -> None:
            conn.sendall(data)
            conn.close()

        return run_session(info, self.factory, report)

    def _reap(self) -> None:
        """Collect exited children and tell the hub each one's exit status."""
        while True:
            try:
                pid, wstatus = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            status = os.waitstatus_to_exitcode(wstatus)
            if self.spares.reaped(pid, status):
                continue
            conn = self.children.pop(pid, None)
            log.debug("worker %d exited with %d", pid, status)
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.sendall(orjson.dumps({"exit": status, "pid": pid}) + b"\n")
                conn.close()


#: the limits a fork request may set (``resource.RLIMIT_<name>``)
RLIMITS = frozenset({"AS", "DATA", "FSIZE", "NOFILE", "NPROC"})


def _set_rlimits(limits: Any) -> None:
    """Set the request's resource limits on this (forked) worker: ``{"AS": bytes, ...}``."""
    if not isinstance(limits, dict):
        return
    for name, value in limits.items():
        if name in RLIMITS and isinstance(value, int) and value > 0:
            resource.setrlimit(getattr(resource, f"RLIMIT_{name}"), (value, value))


def _parse_request(data: bytes) -> dict[str, Any]:
    """The request in a line the hub sent (refused when cut short, too large or wrong)."""
    if len(data) > MAX_REQUEST_BYTES:
        raise ValueError("request too large")
    if not data.endswith(b"\n"):
        raise ValueError("connection closed before the request was complete")
    request = orjson.loads(data)
    if not isinstance(request, dict) or not isinstance(request.get("connection_file"), str):
        raise ValueError("a request is an object with a 'connection_file'")
    return request


def _refuse(conn: socket.socket, error: Exception) -> None:
    """Answer a request the server cannot honour with ``{"error": reason}`` and close."""
    log.warning("bad fork request: %s", error)
    with contextlib.suppress(OSError):
        conn.setblocking(True)
        conn.sendall(orjson.dumps({"error": str(error)}) + b"\n")
    conn.close()


def _check_peer(conn: socket.socket) -> None:
    """Only the hub (this server's parent) may ask for a worker, never a worker that
    reaches the socket: the kernel says who connected (``SO_PEERCRED``)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _uid, _gid = struct.unpack("3i", creds)
    if pid != os.getppid():
        raise ValueError(f"process {pid} is not the hub: refused")


def _redirect_output(log_file: str) -> None:
    """stdout and stderr appended to the worker's log."""
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _reseed() -> None:
    """Fresh random state: every child would otherwise repeat the template's sequence."""
    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


def main(argv: list[str] | None = None) -> int:
    """Prepare the template, listen, report readiness and serve fork requests."""
    parser = argparse.ArgumentParser(prog="phoebe_kernel_worker.forkserver", description=__doc__)
    parser.add_argument("--socket", required=True, help="the unix socket to listen on")
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--session-factory", default=DEFAULT_FACTORY)
    parser.add_argument("--prefork", type=int, default=0, help="spare children to keep")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    setup_process(args.log_level)
    exit_with_parent()  # useless without its hub
    factory: SessionFactory = _load_factory(args.session_factory)
    prepare = getattr(factory, "prepare", None)
    if prepare is not None:
        prepare()
    import zmq  # noqa: F401 - imported (no context) so children do not pay for it

    from . import serialize, worker  # noqa: F401

    gc.collect()
    gc.freeze()  # keep the template's objects out of the children's collections (COW)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.socket)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(args.socket)
    os.chmod(args.socket, 0o600)
    listener.listen(256)
    server = ForkServer(listener, factory, args.prefork)
    with os.fdopen(args.ready_fd, "wb") as ready:
        ready.write(orjson.dumps({"pid": os.getpid()}) + b"\n")
    log.info("fork server %d ready on %s", os.getpid(), args.socket)
    try:
        server.serve()
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
