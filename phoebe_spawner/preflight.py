"""Start-up checks: every way the hub can fail before it serves, as one line saying what to do.

Without them a first start on a new machine ends in a traceback: an unwritable data
directory as "unable to open database file" with no path, a port in use as
``[Errno 98]`` with no port, a bad database URL as a SQLAlchemy stack, and a worker
environment without PHOEBE is found only when the first session fails. Each check here
raises :class:`StartupProblem`, whose ``str()`` is the line the hub (``app.py``) and
its subcommands (``subcommands.py``) print before they exit with status 1. They run
once at start-up, in the order the app calls them, before anything is made; nothing
here runs on a request path.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tornado.netutil import bind_sockets

from .configcheck import loopback_only
from .sessions.policy import HUB_FDS, CapacityPlan
from .spawners.wall import session_factories
from .store import DatabaseSchemaError, Store

#: the worker's default session factory, which imports PHOEBE (phoebe_kernel_worker.__main__)
DEFAULT_FACTORY = "phoebe_kernel_worker.factories:phoebe_session"
#: how long the workers' Python may take to import PHOEBE before the hub gives up on it
IMPORT_CHECK_TIMEOUT = 120.0
#: what installs the worker and PHOEBE into a Python, from a phoebe-spawner checkout
#: (README "Installation": phoebe-kernel-worker requires PHOEBE)
WORKER_INSTALL = "-m pip install ./packaging/worker"

# run by the workers' Python: import the session factory (and PHOEBE for the default
# one) and print the last line of the error, if any, on stdout
_IMPORT_CHECK = """\
import importlib, sys
spec, needs_phoebe = sys.argv[1], sys.argv[2] == "1"
try:
    module, _, name = spec.partition(":")
    getattr(importlib.import_module(module), name)
    if needs_phoebe:
        import phoebe
except BaseException as e:
    print(f"{type(e).__name__}: {' '.join(str(e).split())}")
    sys.exit(3)
"""


class StartupProblem(ValueError):
    """A reason the hub cannot start; ``str()`` is one line naming the thing and the fix
    (a ValueError, which the app's ``run`` reports as "cannot start: ..." and exits 1)."""


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


# --- auth mode none ----------------------------------------------------------------------


def refuse_if_exposed(mode: str, ip: str, *, allow_insecure: bool, log: logging.Logger) -> None:
    """Auth ``mode`` none listens on loopback only, unless ``allow_insecure`` says
    otherwise (then it warns); a :class:`StartupProblem` refuses to start."""
    if mode != "none" or loopback_only(ip):
        return
    if not allow_insecure:
        raise StartupProblem(
            f"auth mode 'none' on {ip or 'every interface'} would let anyone who can "
            "reach the port run PHOEBE sessions; listen on 127.0.0.1, choose another "
            "--auth-mode, or pass --allow-insecure"
        )
    log.warning(
        "auth mode 'none' on %s (allow_insecure): anyone who can reach this port can run "
        "PHOEBE sessions",
        ip or "every interface",
    )


# --- the data directory ---------------------------------------------------------------


def make_writable_dir(path: str) -> None:
    """Create the data directory ``path`` (0700) if needed and prove it writable by
    creating and removing a file in it; :class:`StartupProblem` names the path."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        why = e.strerror or _one_line(e)
        raise StartupProblem(
            f"the data directory {path} is not writable ({why}); choose another with "
            "--data-dir (or $PHOEBE_SPAWNER_DATA_DIR) or fix its permissions"
        ) from None


# --- the listening socket ---------------------------------------------------------------


def listen(ip: str, port: int) -> list[socket.socket]:
    """Bind the hub's listening sockets; :class:`StartupProblem` names the address and port."""
    where = f"{ip or 'every interface'}:{port}"
    try:
        return bind_sockets(port, ip or None)
    except socket.gaierror as e:
        raise StartupProblem(
            f"cannot listen on {ip!r}: {_one_line(e.strerror)}; check --ip"
        ) from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise StartupProblem(
                f"{where} is already in use (another phoebe-spawner?); stop it or choose "
                "another port with --port"
            ) from None
        if e.errno == errno.EACCES:
            raise StartupProblem(
                f"cannot listen on {where}: permission denied (ports below 1024 need "
                "privileges); choose another port with --port"
            ) from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise StartupProblem(
                f"cannot listen on {where}: {ip} is not an address of this machine; check --ip"
            ) from None
        raise StartupProblem(
            f"cannot listen on {where}: {e.strerror or _one_line(e)}; check --ip and --port"
        ) from None


# --- the database -----------------------------------------------------------------------


def shown_url(url: str) -> str:
    """``url`` as it may be printed: the password replaced by ``***``."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: hide anything like user:password@
        return re.sub(r"(//[^/:@]*:)[^/@]*@", r"\1***@", url)


async def open_store(url: str, *, upgrade: bool, busy_timeout: float = 5.0) -> Store:
    """Open the database at ``url`` and check (or create, or with ``upgrade`` upgrade) its
    schema. A URL that does not parse, names an unknown database or a driver that is not
    installed, or a database that cannot be opened is a :class:`StartupProblem` showing
    the URL without its password; :class:`DatabaseSchemaError` passes through."""
    shown = shown_url(url)
    try:
        store = Store(url, sqlite_busy_timeout_ms=int(1000 * busy_timeout))
    except Exception as e:
        raise _database_problem(shown, e) from None
    try:
        await store.init(upgrade=upgrade)
    except DatabaseSchemaError:
        await store.close()
        raise
    except Exception as e:
        await store.close()
        raise _database_problem(shown, e) from None
    return store


def _database_problem(shown: str, e: BaseException) -> StartupProblem:
    from sqlalchemy.exc import ArgumentError

    if isinstance(e, ImportError):
        name = getattr(e, "name", None) or _one_line(e)
        how = "pip install '.[postgres]'" if shown.startswith("postgres") else "install it"
        why = f"its driver {name} is not installed ({how})"
    elif isinstance(e, ArgumentError):
        why = f"it is not a database URL SQLAlchemy knows ({_one_line(e)})"
    else:  # the driver's own error, under SQLAlchemy's and the store's wrappers
        for _ in range(5):
            inner = getattr(e, "orig", None) or e.__cause__
            if not isinstance(inner, BaseException):
                break
            e = inner
        why = _one_line(e)
    return StartupProblem(
        f"cannot open the database {shown}: {why}; check --db (or $PHOEBE_SPAWNER_DB_URL)"
    )


# --- the workers' PHOEBE ----------------------------------------------------------------


def worker_python(cmd: Sequence[str]) -> list[str] | None:
    """The interpreter part of a worker command ``[python, flags..., -m,
    phoebe_kernel_worker]``; None for a command of another shape (a wrapper script),
    which the hub cannot check."""
    for i, arg in enumerate(cmd[:-1]):
        if arg == "-m" and cmd[i + 1].startswith("phoebe_kernel_worker"):
            return list(cmd[:i]) if i else None
    return None


def session_factory(worker_args: Sequence[str]) -> str:
    """The ``--session-factory`` a worker command line names (the last wins, as in
    argparse), or the default PHOEBE one."""
    named = session_factories(list(worker_args))
    return named[-1] if named else DEFAULT_FACTORY


async def check_worker_imports(
    cmd: Sequence[str], worker_args: Sequence[str], env: dict[str, str]
) -> str | None:
    """Check, in a subprocess with the workers' Python and environment ``env``, that a
    worker started with ``cmd`` and ``worker_args`` can import its session factory (and
    PHOEBE, for the default one). Returns what was checked, or None when ``cmd`` is not
    a Python command the hub can tell; raises :class:`StartupProblem` with the
    ``pip install`` that fixes it. Called by the app for the local backends."""
    python = worker_python(cmd)
    if python is None:
        return None
    factory = session_factory(worker_args)
    needs_phoebe = factory == DEFAULT_FACTORY
    what = "PHOEBE" if needs_phoebe else f"the session factory {factory}"
    argv = [*python, "-c", _IMPORT_CHECK, factory, "1" if needs_phoebe else "0"]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError as e:
        raise StartupProblem(
            f"cannot run the workers' Python {python[0]}: {e.strerror or _one_line(e)}; "
            "check LocalProcessSpawner.cmd"
        ) from None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), IMPORT_CHECK_TIMEOUT)
    except TimeoutError:
        raise StartupProblem(
            f"the workers' Python {python[0]} took over {IMPORT_CHECK_TIMEOUT:.0f} s to "
            f"import {what}"
        ) from None
    finally:  # timed out, or start-up interrupted: the check never outlives it
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode == 0:
        return what
    error = _one_line(out.decode(errors="replace")) or f"exit status {proc.returncode}"
    ours = needs_phoebe or factory.startswith("phoebe_kernel_worker")
    fix = (
        f"install it there, from the phoebe-spawner checkout: {python[0]} {WORKER_INSTALL}"
        if ours and error.startswith(("ModuleNotFoundError", "ImportError"))
        else "check LocalProcessSpawner.worker_args and environment"
    )
    raise StartupProblem(f"workers cannot import {what} ({error}) with {python[0]}; {fix}")


async def check_local_workers(spawner_class: type, parent: Any, log: logging.Logger) -> None:
    """For the local backends (``spawner_class`` a LocalProcessSpawner): refuse to start
    when workers, run with their configured Python and environment, cannot import PHOEBE
    (or their session factory). Called by the app's ``setup`` from the command line."""
    from .spawners.local import LocalProcessSpawner

    if not issubclass(spawner_class, LocalProcessSpawner):
        return  # containers and cluster nodes have their own Python
    proto = spawner_class(parent=parent)
    checked = await check_worker_imports(proto.cmd, proto.worker_args, proto.get_env())
    if checked is None:
        log.info("not checking that workers can import PHOEBE: their cmd is not python -m")
    else:
        log.debug("workers can import %s", checked)


# --- capacity ---------------------------------------------------------------------------


def check_capacity(plan: CapacityPlan) -> None:
    """Refuse to start when this machine's hard limits cannot hold ``max_sessions``
    (``plan``: :meth:`phoebe_spawner.sessions.capacity.HubCapacity.plan`): one line with
    the number of sessions it allows and how to change that. Called by the session
    manager's ``fit_capacity`` from the app's ``setup``, before the limits are raised."""
    if plan.fits:
        return
    allowed = plan.allowed or 0
    if plan.sessions_by_workers is not None and plan.sessions_by_workers <= allowed:
        why = (
            f"{plan.max_sessions + plan.pool} workers but the spawner runs at most "
            f"{plan.workers} (a root hub's local workers each hold a uid of "
            "LocalProcessSpawner.worker_uids)"
        )
        fix = f"widen that range or lower --max-sessions to {allowed}"
    elif plan.sessions_by_sockets(plan.socket_limit) <= allowed:  # ZMQ's own limit
        why = (
            f"{plan.max_sockets} ZMQ sockets ({plan.sockets_per_session} a session) but ZMQ "
            f"allows {plan.socket_limit}"
        )
        fix = f"lower --max-sessions to {allowed} (or run more hubs)"
    else:
        http = f", {plan.connections} HTTP connections" if plan.connections else ""
        why = (
            f"{plan.nofile} open files ({plan.fds_per_session} a session{http}, "
            f"{HUB_FDS} for the hub) but the hard limit (ulimit -Hn) is {plan.hard_nofile}"
        )
        fix = (
            "raise the hard limit (ulimit -Hn before starting, LimitNOFILE= for a systemd "
            f"service) or lower --max-sessions to {allowed}"
        )
    pool = f" and a warm pool of {plan.pool}" if plan.pool else ""
    raise StartupProblem(
        f"max_sessions {plan.max_sessions}{pool} needs {why}: this machine allows "
        f"{allowed} sessions; {fix}"
    )
