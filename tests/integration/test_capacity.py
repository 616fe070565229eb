"""Capacity bounded by the operating system's limits, with a real hub and real workers.

A hub of either local backend started under a low open-files limit (``preexec_fn``, as
``ulimit -n`` would) raises its soft limit to its hard one for its sessions, hands the
fork server the raised limit and the workers the one it started with. When its files
run out anyway (here: idle HTTP connections, which ``max_connections=0`` leaves uncapped
and unplanned) the next start is a 429 saying capacity, with one warning in the log and
no traceback; port-status counts that ceiling, and once a session ends a start works
again. The start-up refusal when the hard limit cannot hold ``max_sessions`` is in
test_startup.py; the arithmetic in tests/unit/test_policy.py.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import os
import resource
import signal
import socket
import subprocess
import sys

import orjson
import psutil
import pytest
import zmq

from phoebe_spawner.sessions.capacity import exhausted, out_of_capacity
from phoebe_spawner.spawners.base import SpawnCapacityError, SpawnError

from ..processes import spares_of
from ..waiting import wait_for
from .test_cli import EXE, free_port, wait_healthy

TEST_WORKERS = (
    "c.LocalProcessSpawner.worker_args = "
    "['--session-factory', 'phoebe_kernel_worker.testing:test_session']\n"
)
#: the limits the hub starts with: a soft limit it raises, a hard one it cannot
STARTED_SOFT, HARD = 100, 300
#: files left free for the sessions the test then starts (two of 7 or 8 files, not three)
FREE = 20


def test_running_out_of_files_or_ports_is_capacity_and_nothing_else_is():
    """What the manager answers 429 for: EMFILE/ENFILE anywhere in a start's error chain
    (ZMQ's socket limit raises EMFILE too) and a spawner out of ports."""
    assert exhausted(zmq.ZMQError(errno.EMFILE)) is not None
    assert "system" in (exhausted(OSError(errno.ENFILE, "Too many open files in system")) or "")
    with pytest.raises(SpawnError) as wrapped:
        _spawn_without_files()
    assert out_of_capacity(wrapped.value) == "the hub's open-files or ZMQ socket limit is reached"
    assert out_of_capacity(SpawnCapacityError("no free port in 9000-9030")) == (
        "no free port in 9000-9030"
    )
    assert out_of_capacity(SpawnError("worker exited with status 1")) is None
    assert exhausted(OSError(errno.ENOENT, "No such file")) is None


def _spawn_without_files() -> None:
    """What a local spawner raises when the hub has no file left for the worker's pipe."""
    try:
        raise OSError(errno.EMFILE, "Too many open files")
    except OSError as e:
        raise SpawnError("could not start worker command 'python'") from e


FIT = """
import json, logging, resource, sys
import zmq
from phoebe_spawner.sessions.bus import EventBus
from phoebe_spawner.sessions.capacity import HubCapacity
from phoebe_spawner.spawners.forkserver import ForkServerSpawner
ctx = zmq.Context()
cap = HubCapacity(ForkServerSpawner, ctx, EventBus(), logging.getLogger())
cap.fit(int(sys.argv[1]), 2, 10, lambda plan: None)
print(json.dumps({
    "soft": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    "worker_nofile": cap.worker_nofile,
    "max_sockets": ctx.get(zmq.MAX_SOCKETS),
    "allows": cap.allows,
    "room": [cap.has_room(n) for n in (1, 4, 100)],
}))
"""


@pytest.mark.parametrize(("soft", "hard"), [(100, 300), (300, 300)])
def test_fitting_raises_the_soft_limit_and_zmqs_and_gives_workers_the_old_one(soft, hard):
    """In a process started with these limits: 1,100 sessions need more ZMQ sockets than
    libzmq's 1,023; the soft limit goes up to the hard one (workers get the old one back
    only when it was raised), and what 300 files hold is counted (64 for the hub, 10
    HTTP connections, 2 pool workers, 8 files a session: 26)."""
    proc = subprocess.run(
        [sys.executable, "-c", FIT, "1100"],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )
    assert proc.returncode == 0, proc.stderr
    fitted = orjson.loads(proc.stdout)
    assert fitted["soft"] == hard
    assert fitted["worker_nofile"] == (soft if soft < hard else 0)
    assert fitted["max_sockets"] == 32 + 3 * 1102
    assert fitted["allows"] == (300 - 64 - 10) // 8 - 2 == 26
    assert fitted["room"] == [True, True, True]  # four starts' files at most: 32 of ~280


class Api:
    """One keep-alive HTTP connection to the hub (auth mode none)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, method: str, path: str) -> tuple[int, dict]:
        self.conn.request(method, path, body=b"{}" if method == "POST" else None)
        resp = self.conn.getresponse()
        return resp.status, orjson.loads(resp.read())

    def start(self) -> tuple[int, dict]:
        return self.call("POST", "/dash/start-session")

    def capacity(self) -> tuple[int, int, int]:
        """``/dash/port-status``'s total, reserved and available."""
        status, ports = self.call("GET", "/dash/port-status")
        assert status == 200, ports
        return ports["total_ports"], ports["reserved_ports"], ports["available_ports"]


def idle_connection(port: int) -> socket.socket:
    """A connection that made one request and now holds a file in the hub."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: hub\r\n\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    return sock


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def nofile(pid: int) -> int:
    """The soft open-files limit of process ``pid`` (from /proc: a worker of another uid
    may not be asked with prlimit)."""
    with open(f"/proc/{pid}/limits") as f:
        line = next(line for line in f if line.startswith("Max open files"))
    return int(line.split()[3])


@pytest.fixture(params=["local-forkserver", "local"])
def low_limit_hub(request, tmp_path):
    """A hub of each local backend started with open-files limits of 100 (soft) and 300
    (hard)."""
    (tmp_path / "config.py").write_text(TEST_WORKERS)
    port = free_port()
    argv = [*EXE, "--config=config.py", f"--port={port}", f"--data-dir={tmp_path / 'data'}"]
    argv += ["--auth-mode=none", f"--spawner={request.param}", "--max-sessions=6"]
    argv += [
        f"--PhoebeSpawnerApp.{name}=0" for name in ("max_connections", "max_connections_per_ip")
    ]
    argv += ["--SessionManager.start_rate_per_minute=0"]
    log = tmp_path / "hub.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (STARTED_SOFT, HARD)),
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        yield port, proc.pid, log, request.param
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_a_hub_out_of_files_answers_capacity_until_a_session_ends(low_limit_hub):
    port, pid, log, backend = low_limit_hub
    with contextlib.ExitStack() as stack:
        api = Api(port)
        stack.callback(api.conn.close)
        status, first = api.start()  # the first session also starts ZMQ's threads
        assert status == 200, first
        assert nofile(pid) == HARD  # raised for the sessions, up to the hard limit
        children = psutil.Process(pid).children()
        forkserver = [p for p in children if "forkserver" in str(p.cmdline())]
        assert len(forkserver) == (backend == "local-forkserver")
        workers = forkserver[0].children() if forkserver else children
        assert [nofile(p.pid) for p in forkserver] == ([HARD] if forkserver else [])
        spares = {p.pid for p in spares_of(forkserver[0].pid)} if forkserver else set()
        workers = [w for w in workers if w.pid not in spares]  # spares take theirs when used
        limits = [(nofile(w.pid), w.cmdline()) for w in workers]
        assert [n for n, _ in limits] == [STARTED_SOFT], limits  # not the raised limit

        # fill the hub's files with idle connections until FREE are left (counted again
        # after each: the hub's threads open files for a moment, e.g. cgroup writes)
        def filled() -> bool:
            while open_files(pid) < HARD - FREE:
                stack.enter_context(idle_connection(port))
            return open_files(pid) == HARD - FREE

        wait_for(filled, "the hub to hold the idle connections")
        started = [first["session_id"]]
        while True:
            status, body = api.start()
            if status != 200:
                break
            started.append(body["session_id"])
        assert status == 429, body
        assert body["detail"] == f"Capacity reached: {len(started)} sessions are running"
        assert len(started) == 3  # the first, then two with the FREE files
        assert api.capacity() == (3, 3, 0)  # total, reserved, available
        status, again = api.start()  # still no room: 429 again (and no second warning)
        assert (status, again["detail"]) == (429, "Capacity reached: 3 sessions are running")

        status, _ = api.call("POST", f"/dash/end-session/{started.pop()}")
        assert status == 200
        wait_for(lambda: api.capacity() == (6, 2, 4), "max_sessions to be the capacity again")
        status, body = api.start()
        assert status == 200, body

    text = log.read_text()
    warnings = [line for line in text.splitlines() if "capacity:" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0], text
    assert "open-files limit is reached with 3 sessions live" in warnings[0]
    assert "Traceback" not in text
