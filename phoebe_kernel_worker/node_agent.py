"""The job side of the Slurm backend: start the worker on the node, register it with the hub.

The batch script of a :class:`~phoebe_spawner.spawners.slurm.SlurmSpawner` job ends with::

    exec python -m phoebe_kernel_worker.node_agent --connection-file F -- <worker cmd>

The agent is part of the worker distribution (phoebe-kernel-worker), so a node needs
nothing of the hub's; it uses the standard library and :mod:`phoebe_kernel_worker.protocol`
only, and starts in milliseconds:

1. reads the 0600 connection file the hub wrote on the shared filesystem: the session
   key, the registration address and a one-time token; then deletes it, so the secrets
   stay on shared storage only until the job has started;
2. picks the address to bind on: the node's address on the route to the hub (or the
   configured one), and writes a node-local 0600 copy of the connection info for the
   worker, without the token;
3. starts the worker with ``--ready-fd``; the worker binds its channels on ports it
   chooses and reports them on that pipe;
4. sends the report to the hub's registration listener over TCP, HMAC-signed with the
   token (:mod:`phoebe_kernel_worker.protocol.registration`), and waits for the hub's
   ``ok``;
5. waits for the worker, forwards SIGTERM/SIGINT/SIGHUP to it, and exits the way it did
   (by the same signal, or with the same status), so Slurm records the worker's end.

The registration message is one JSON line
(:func:`~phoebe_kernel_worker.protocol.registration.registration_message`); the hub
answers one line, ``ok`` or ``denied``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from phoebe_kernel_worker import protocol
from phoebe_kernel_worker.protocol.registration import REGISTRATION_FIELD, registration_message

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


# --- the agent ------------------------------------------------------------------------------


def route_address(host: str, port: int) -> str:
    """This machine's address on the route to ``host`` (no packet is sent)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        return str(s.getsockname()[0])


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def send_registration(address: str, message: bytes, timeout: float) -> None:
    """Deliver the signed report to the hub, retrying connection errors until ``timeout``."""
    host, port = split_address(address)
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            with socket.create_connection((host, port), timeout=10) as conn:
                conn.sendall(message)
                answer = conn.makefile("rb").readline(64).strip()
            if answer == b"ok":
                return
            raise SystemExit(f"the hub refused the registration: {answer.decode(errors='replace')}")
        except OSError as e:
            if time.monotonic() + delay > deadline:
                raise SystemExit(f"cannot reach the hub at {address}: {e}") from None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _read_report(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as f:
        return f.read(1024 * 1024)


def _exit_like(returncode: int) -> int:
    """Leave the way the worker did: by its signal (Slurm records it), or its status."""
    if returncode < 0:
        sig = -returncode
        if sig in FORWARDED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)  # our forwarding handler would catch it
        os.kill(os.getpid(), sig)
        time.sleep(1)
        return 128 + sig
    return returncode


def main(argv: list[str] | None = None) -> int:
    """Run the agent (see the module docstring); returns the worker's exit status."""
    parser = argparse.ArgumentParser(prog="phoebe_kernel_worker.node_agent")
    parser.add_argument("--connection-file", required=True)
    parser.add_argument("--registration-timeout", type=float, default=60.0)
    parser.add_argument("worker", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    worker_cmd = [a for a in args.worker if a != "--"] if args.worker[:1] == ["--"] else args.worker
    if not worker_cmd:
        parser.error("the worker command is missing after --")
    os.umask(0o077)

    raw = orjson.loads(Path(args.connection_file).read_bytes())
    Path(args.connection_file).unlink(missing_ok=True)  # the secrets leave shared storage
    info = protocol.ConnectionInfo.from_dict(raw)
    registration = info.extra.pop(REGISTRATION_FIELD)
    address, token = str(registration["address"]), str(registration["token"])
    if not info.ip or info.ip == "auto":
        info.ip = route_address(*split_address(address))
    info.exit_with_parent = False  # the agent is the parent; Slurm ends the job

    private = Path(tempfile.mkdtemp(prefix="phoebe-worker-"))
    try:
        returncode = _run_worker(worker_cmd, info, private, address, token, args)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return _exit_like(returncode)


def _run_worker(
    worker_cmd: list[str],
    info: protocol.ConnectionInfo,
    private: Path,
    address: str,
    token: str,
    args: argparse.Namespace,
) -> int:
    """Start the worker, register its endpoints, wait for it; returns its returncode."""
    conn_file = protocol.write_connection_file(private / "connection.json", info)
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [*worker_cmd, "--connection-file", str(conn_file), "--ready-fd", str(write_fd)],
        pass_fds=(write_fd,),
        stdin=subprocess.DEVNULL,
    )
    os.close(write_fd)
    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, lambda signum, frame: _forward(proc, signum))
    report = _read_report(read_fd)
    if not report.strip():
        return proc.wait()  # the worker's own error is in the job's log
    endpoints, pid = protocol.endpoints_from_json(report)
    message = registration_message(
        token,
        {
            "session_id": info.session_id,
            "job_id": os.environ.get("SLURM_JOB_ID", ""),
            "host": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
            "endpoints": endpoints,
            "pid": pid,
        },
    )
    try:
        send_registration(address, message, args.registration_timeout)
    except SystemExit as e:
        print(f"phoebe slurm agent: {e}", file=sys.stderr, flush=True)
        _forward(proc, signal.SIGTERM)
        proc.wait()
        return 1
    return proc.wait()


def _forward(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signum)


if __name__ == "__main__":
    sys.exit(main())
