"""Spare children of the fork server: forked ahead of requests, each waiting for one.

Used by :class:`phoebe_kernel_worker.forkserver.ForkServer` when the hub asks for
``--prefork N`` (``c.ForkServerSpawner.prefork``): the template keeps its spares in a
:class:`SparePool`, and each spare runs :func:`die_with_template`,
:func:`wait_for_request` and :func:`keep_alone`. A spare is forked from the template
with one end of a fresh unix socketpair; it has already done what does not depend on
any request (its own session, default signal handlers, the template's descriptors
closed, stdin from ``/dev/null``) and then blocks in :func:`wait_for_request`, holding
no thread, no ZMQ context and no descriptor of the hub. The template hands it a request
with :func:`hand_over`: the request line and the hub's connection (passed with
``SCM_RIGHTS``); everything that depends on the request (log, rlimits, environment,
reseeding, the connection file, the wall with the request's uid and paths, ZMQ) happens
after that, in the same order as in a child forked on demand.

A spare dies with the template: the kernel sends it ``SIGKILL`` when the template exits
(``PR_SET_PDEATHSIG``, set here and cleared once it takes a request, so a worker keeps
exactly the death signal a worker forked on demand has), and it exits when its
socketpair reaches EOF (the template closed it, e.g. when stopping).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import orjson

log = logging.getLogger("phoebe_kernel_worker.forkserver")

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
#: a waiting spare's process name (``ps``, ``/proc/PID/comm``, psutil's ``name()``)
SPARE_NAME = "phoebe-spare"

#: longest request line (the template refuses longer ones before they reach a spare)
MAX_REQUEST_BYTES = 1024 * 1024


#: seconds between attempts to fork a spare after one failed or died unasked
SPARE_RETRY = 1.0
#: seconds without a new request before a spare is forked (a burst is served first)
SPARE_QUIET = 0.05
#: seconds a spare may take to read its request before another is tried
HAND_OVER_TIMEOUT = 5.0


class SparePool:
    """The template's spares: pid -> the template's end of the spare's socketpair.

    Owned by :class:`~phoebe_kernel_worker.forkserver.ForkServer` (single-threaded): it
    asks :meth:`due` when to fork the next one, forks it through :meth:`add`, hands
    requests over with :meth:`hand_over` (oldest spare first), tells :meth:`reaped` about
    every exited child and calls :meth:`drop` when it stops.
    """

    def __init__(self, size: int) -> None:
        self.size = max(0, size)
        self.socks: dict[int, socket.socket] = {}
        self._retry_at = 0.0

    def __len__(self) -> int:
        return len(self.socks)

    def due(self, last_request: float) -> float | None:
        """When (``time.monotonic``) the next spare may be forked; None when the pool is
        full. Never within ``SPARE_QUIET`` of the last request, nor within
        ``SPARE_RETRY`` of a failed fork or of a spare that died unasked."""
        if len(self.socks) >= self.size:
            return None
        return max(self._retry_at, last_request + SPARE_QUIET)

    def add(self, spawn: Callable[[socket.socket, socket.socket], int]) -> None:
        """Fork one spare: ``spawn(theirs, mine)`` forks a child that keeps ``theirs``
        (and closes ``mine``) and returns its pid."""
        mine, theirs = socket.socketpair()
        try:
            pid = spawn(theirs, mine)
        except (OSError, ValueError) as e:
            mine.close()
            theirs.close()
            log.warning("cannot fork a spare (%s); trying again in %g s", e, SPARE_RETRY)
            self._retry_at = time.monotonic() + SPARE_RETRY
            return
        theirs.close()
        self.socks[pid] = mine
        log.debug("spare %d ready (%d of %d)", pid, len(self.socks), self.size)

    def hand_over(self, conn: socket.socket, line: bytes) -> int | None:
        """Give the request ``line`` and the hub's connection to the oldest waiting spare;
        the pid of the spare that took it, None if none could."""
        while self.socks:
            pid = next(iter(self.socks))
            sock = self.socks.pop(pid)
            try:
                sock.settimeout(HAND_OVER_TIMEOUT)  # a stopped spare must not stop the loop
                hand_over(sock, conn, line)
            except OSError as e:
                log.warning("spare %d could not take a request: %s", pid, e)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # reaped with the other children
                continue
            finally:
                sock.close()
            log.debug("spare %d took a request", pid)
            return pid
        return None

    def reaped(self, pid: int, status: int) -> bool:
        """Whether ``pid`` (exited with ``status``) was a waiting spare; it is replaced
        after ``SPARE_RETRY`` (it was killed while waiting, e.g. out of memory)."""
        sock = self.socks.pop(pid, None)
        if sock is None:
            return False
        sock.close()
        log.warning("spare %d exited with %d before it took a request", pid, status)
        self._retry_at = time.monotonic() + SPARE_RETRY
        return True

    def forget(self) -> None:
        """In a child of the template: close every spare's socket, keep no record."""
        for sock in self.socks.values():
            sock.close()
        self.socks.clear()

    def drop(self) -> None:
        """End and reap every spare (the template is stopping)."""
        for pid, sock in self.socks.items():
            sock.close()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.socks.clear()


class TemplateGone(Exception):
    """The spare's socketpair ended before a request came: the template stopped or died."""


def _prctl(option: int, arg: int | bytes) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _comm() -> bytes:
    try:
        with open("/proc/self/comm", "rb") as f:
            return f.read().strip()
    except OSError:
        return b""


def die_with_template(template: int) -> bytes:
    """Have the kernel kill this spare when the template (pid ``template``) exits, and
    name it :data:`SPARE_NAME`; returns its name before. :class:`TemplateGone` if the
    template already exited (before the death signal was set)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != template:
        raise TemplateGone("the template exited before the spare was ready")
    name = _comm()
    _prctl(PR_SET_NAME, SPARE_NAME.encode())
    return name


def keep_alone(name: bytes) -> None:
    """Clear the spare's death signal and give it back its ``name``: from here on it is a
    worker like any forked one."""
    _prctl(PR_SET_PDEATHSIG, 0)
    if name:
        _prctl(PR_SET_NAME, name[:15])


def hand_over(sock: socket.socket, conn: socket.socket, line: bytes) -> None:
    """Give the spare at the other end of ``sock`` the hub's connection ``conn`` and the
    request ``line`` (ending in a newline). Called by the template; raises ``OSError``
    when the spare is gone (the template then tries another or forks on demand)."""
    sent = socket.send_fds(sock, [line], [conn.fileno()])
    if sent < len(line):
        sock.sendall(line[sent:])


def wait_for_request(sock: socket.socket) -> tuple[socket.socket, dict[str, Any]]:
    """Block until the template hands this spare a request; the hub's connection and the
    request. Raises :class:`TemplateGone` on EOF. Called in the spare only."""
    data, fds, _flags, _addr = socket.recv_fds(sock, 65536, 1)
    if not data:
        for fd in fds:
            os.close(fd)
        raise TemplateGone("the template closed the spare's socket")
    if len(fds) != 1:
        raise ValueError(f"a spare expects one descriptor with its request, got {len(fds)}")
    conn = socket.socket(fileno=fds[0])
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise TemplateGone("the template closed the spare's socket mid-request")
        data += chunk
        if len(data) > MAX_REQUEST_BYTES:
            raise ValueError("request too large")
    sock.close()
    request = orjson.loads(data)
    if not isinstance(request, dict):
        raise ValueError("a request is an object")
    return conn, request
