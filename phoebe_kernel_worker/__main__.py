"""Entry point: ``python -m phoebe_kernel_worker --connection-file F [--ready-fd N]``.

Called by spawners only. Reads the 0600 connection file (the signing key never comes
through argv or the environment), builds the session (imports PHOEBE and creates the
default bundle), binds the channels and then reports its endpoints on the readiness
fd and/or file, so the hub never guesses ports.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import protocol, wall
from .protocol.exits import EXIT_NO_FREE_PORT
from .worker import KernelWorker, NoFreePort, SessionFactory

DEFAULT_FACTORY = "phoebe_kernel_worker.factories:phoebe_session"
PR_SET_PDEATHSIG = 1


def _load_factory(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def exit_with_parent() -> None:
    """Get SIGTERM when the parent (the hub) dies, on Linux; exit now if it already has."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        logging.getLogger("phoebe_kernel_worker").warning("cannot follow the hub's death here")
    if os.getppid() != parent or parent == 1:  # it died before prctl took effect
        raise SystemExit("the hub that started this worker is gone")


def _report_ready(args: argparse.Namespace, report: bytes) -> None:
    if args.ready_file:
        tmp = Path(args.ready_file + ".tmp")
        tmp.write_bytes(report)
        os.replace(tmp, args.ready_file)
    if args.ready_fd is not None:
        with os.fdopen(args.ready_fd, "wb") as f:
            f.write(report)


def setup_process(log_level: str) -> None:
    """What every worker-side process starts with (a worker, the fork server): logging to
    stderr, online passbands off unless asked for, and private files (umask 077)."""
    logging.basicConfig(
        level=log_level.upper(),
        format="[worker %(process)d %(levelname)s %(asctime)s] %(message)s",
        stream=sys.stderr,
    )
    os.environ.setdefault("PHOEBE_ENABLE_ONLINE_PASSBANDS", "FALSE")
    os.umask(0o077)


def main(argv: list[str] | None = None) -> int:
    """Run one worker until it is told to stop; returns the exit status."""
    parser = argparse.ArgumentParser(prog="phoebe_kernel_worker", description=__doc__)
    parser.add_argument("--connection-file")
    parser.add_argument(
        "--list-passbands",
        action="store_true",
        help="print the installed passbands as JSON and exit (used by the hub)",
    )
    parser.add_argument("--ready-fd", type=int, default=None)
    parser.add_argument("--ready-file", default=None)
    parser.add_argument(
        "--session-factory",
        default=DEFAULT_FACTORY,
        help="module:callable building the command session (tests use fault-injecting ones)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    setup_process(args.log_level)
    if args.list_passbands:
        from .commands import list_passbands
        from .serialize import dumps

        sys.stdout.buffer.write(dumps(list_passbands()) + b"\n")
        return 0
    if not args.connection_file:
        parser.error("--connection-file is required")

    info = protocol.read_connection_file(args.connection_file)
    factory: SessionFactory = _load_factory(args.session_factory)
    return run_session(info, factory, lambda report: _report_ready(args, report))


def run_session(
    info: protocol.ConnectionInfo, factory: SessionFactory, report: Callable[[bytes], None]
) -> int:
    """Build the session, bind its channels, ``report`` the endpoints and serve until told
    to stop; returns the exit status. Shared by :func:`main` (a cold worker) and the fork
    server's children (:mod:`phoebe_kernel_worker.forkserver`)."""
    Path(info.session_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chdir(info.session_dir)
    try:
        summary = wall.enter(info.wall, info.session_dir, info.port_range)
    except (wall.WallError, OSError) as e:
        raise SystemExit(f"cannot wall the worker in: {e}") from None
    logging.getLogger("phoebe_kernel_worker").info("%s", summary)
    if info.exit_with_parent:  # after the wall: changing uid clears the death signal
        exit_with_parent()
    from .serialize import dumps

    session = factory(info)
    worker = KernelWorker(info, session, dumps=dumps)
    worker.install_signal_handlers()
    try:
        try:
            endpoints = worker.bind()
        except NoFreePort as e:
            logging.getLogger("phoebe_kernel_worker").error("%s", e)
            worker.close()
            return EXIT_NO_FREE_PORT
        report(protocol.endpoints_to_json(endpoints, pid=os.getpid()))
        logging.getLogger("phoebe_kernel_worker").info("serving session on %s", endpoints)
        worker.serve()
    except SystemExit:
        worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
