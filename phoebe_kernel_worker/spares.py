"""Spare children of the fork server: forked ahead of requests, each waiting for one.

Used by :class:`phoebe_kernel_worker.forkserver.ForkServer` when the hub asks for
``--prefork N`` (``c.ForkServerSpawner.prefork``). A spare is forked from the template
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

import ctypes
import os
import signal
import socket
from typing import Any

import orjson

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
#: a waiting spare's process name (``ps``, ``/proc/PID/comm``, psutil's ``name()``)
SPARE_NAME = "phoebe-spare"

#: longest request line (the template refuses longer ones before they reach a spare)
MAX_REQUEST_BYTES = 1024 * 1024


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
