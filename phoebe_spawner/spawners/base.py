"""The Spawner contract: how the hub starts, watches and stops one worker.

Modelled on JupyterHub's ``Spawner`` and jupyter_client's kernel provisioners. The
session manager (``phoebe_spawner.sessions``) is the only caller. A spawner touches
neither the database nor HTTP; it gets what it needs as constructor arguments and
reports back through return values and :meth:`get_state`.

Lifecycle, as the session manager drives it::

    spawner = SpawnerClass(session_id=..., user=..., key=..., session_dir=..., ...)
    endpoint = await spawner.start()      # a WorkerEndpoint, once the channels are bound
    await spawner.poll()                  # None while running, an int exit status after
    cancel = spawner.watch_exit(callback) # optional: told of the exit instead of polling
    state = spawner.get_state()           # JSON-able; persisted by the manager
    await spawner.stop()                  # idempotent; returns once the worker is gone

After a hub restart a fresh spawner is built with the same arguments, then
``load_state(state)`` re-adopts the worker (``spawner.endpoint`` says where it listens);
``poll()`` says whether it is still there.

The contract is sealed: a subclass that does not implement ``start``, ``stop`` and
``poll`` is refused when it is defined (pass ``abstract=True`` in the class statement for
an intermediate base class), and whatever ``start()`` returns must be a
:class:`~phoebe_spawner.channels.WorkerEndpoint`. The base class records it as
:attr:`Spawner.endpoint` and owns that part of the state. The hub learns a local process
id only from :meth:`Spawner.local_pid` (None unless the worker is a process of the hub's
machine), and a warm-pool worker is given its owner through :meth:`Spawner.bind`.

Contract details every backend honours (``tests/unit/test_spawner_contract.py``
checks them for each backend):

* ``poll()`` returns ``None`` while the worker runs *or is starting*, and an ``int``
  once it has exited or is unknown (never a string, never raises for a dead worker).
  Before ``start()`` and after ``clear_state()`` it returns ``0``.
* ``stop()`` may be called twice, concurrently with a failing ``start()``, or on a
  worker that already died; it never raises for those.
* ``start()`` raises :class:`SpawnError` with a one-line human reason when the
  worker cannot start; it cleans up whatever it created first.
* Subclasses that override ``get_state``/``load_state``/``clear_state`` call
  ``super()``.
* ``watch_exit(callback)`` is optional: a backend that can learn of its worker's exit
  without asking (a pidfd, a connection that reports it) calls ``callback(status)`` once
  when it happens; the default returns None and the session manager polls instead.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar

from traitlets import Any as TraitAny
from traitlets import (
    Bool,
    Dict,
    Float,
    Integer,
    List,
    TraitError,
    TraitType,
    Unicode,
    default,
    validate,
)
from traitlets.config import LoggingConfigurable

from phoebe_kernel_worker.protocol import ConnectionInfo, write_connection_file
from phoebe_kernel_worker.protocol.limits import WorkerLimits

from ..channels import WorkerEndpoint


class SpawnError(Exception):
    """A worker could not be started; ``str()`` is the reason shown to the user."""


class SpawnCapacityError(SpawnError):
    """No worker can start because a resource pool (ports, slots) is exhausted (429)."""


class ByteSpecification(TraitType[int | None, int | str | None]):
    """An integer number of bytes that also accepts strings like ``"512M"`` or ``"2G"``."""

    info_text = "a number of bytes, or a string with a K, M, G or T suffix"
    UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}

    def validate(self, obj: Any, value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool):
            self.error(obj, value)
        if isinstance(value, int | float):
            return int(value)
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT])?i?B?\s*", str(value), re.I)
        if not match:
            raise TraitError(f"{value!r} is not a byte specification like '2G'")
        number, unit = match.groups()
        return int(float(number) * self.UNITS.get((unit or "").upper(), 1))


# Numerical libraries read these when they load; a site may set them because an older
# OpenBLAS computes wrong results (or crashes) on its processors without them. Workers
# inherit them so that a result through the hub is bit for bit what in-process PHOEBE
# gives in the hub's environment.
NUMERICAL_ENV = [
    "OPENBLAS_*",
    "GOTO*",
    "OMP_*",
    "MKL_*",
    "BLIS_*",
    "VECLIB_*",
    "NUMEXPR_*",
]

# PHOEBE's own switches (read by phoebe at import and run time).
PHOEBE_ENV = [
    "PHOEBE_ENABLE_*",
    "PHOEBE_MULTIPROC_NPROCS",
    "PHOEBE_MPI_NPROCS",
    "PHOEBE_PBDIR",
    "PHOEBE_TABLES_SERVER",
    "PHOEBE_UPDATE_PASSBAND_IGNORE_VERSION",
    "PHOEBE_DOWNLOAD_PASSBAND_DEFAULTS_*",
]

DEFAULT_ENV_KEEP = [
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "PYTHONPATH",
    *PHOEBE_ENV,
    *NUMERICAL_ENV,
]

# Never passed to a worker, whatever env_keep says: the hub's own secrets and settings
# and JupyterHub's service credentials.
WITHHELD_ENV = ["PHOEBE_SPAWNER_*", "JUPYTERHUB_*", "JPY_*"]

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def select_env(environ: Mapping[str, str], keep: Iterable[str]) -> dict[str, str]:
    """The variables of ``environ`` whose names match one of ``keep`` (exact names or
    ``fnmatch`` patterns such as ``OPENBLAS_*``), less :data:`WITHHELD_ENV`."""
    patterns = list(keep)
    return {
        name: value
        for name, value in environ.items()
        if any(fnmatch.fnmatchcase(name, p) for p in patterns)
        and not any(fnmatch.fnmatchcase(name, w) for w in WITHHELD_ENV)
    }


#: what every backend implements (checked when a subclass is defined)
REQUIRED_METHODS = ("start", "stop", "poll")


def _recording_start(
    start: Callable[[Any], Awaitable[WorkerEndpoint]],
) -> Callable[[Any], Awaitable[WorkerEndpoint]]:
    """Wrap a backend's ``start`` so that the base class records (and checks) the
    endpoint it returns; applied by :meth:`Spawner.__init_subclass__`."""
    if getattr(start, "_records_endpoint", False):
        return start

    @functools.wraps(start)
    async def recorded(self: Spawner) -> WorkerEndpoint:
        self.endpoint = None
        endpoint = await start(self)
        if not isinstance(endpoint, WorkerEndpoint):
            raise TypeError(
                f"{type(self).__name__}.start() returned {type(endpoint).__name__}, "
                "not a WorkerEndpoint"
            )
        self.endpoint = endpoint
        return endpoint

    recorded._records_endpoint = True  # type: ignore[attr-defined]
    return recorded


class Spawner(LoggingConfigurable):
    """Base class of all backends. Configure subclasses in ``phoebe_spawner_config.py``."""

    def __init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        """Seal the contract: refuse a backend that misses a required method, and make
        its ``start`` record the endpoint it returns."""
        super().__init_subclass__(**kwargs)
        if "start" in cls.__dict__:
            cls.start = _recording_start(cls.__dict__["start"])  # type: ignore[method-assign,assignment]
        if abstract:
            return
        missing = [m for m in REQUIRED_METHODS if getattr(cls, m) is getattr(Spawner, m)]
        if missing:
            raise TypeError(
                f"{cls.__module__}.{cls.__name__} does not implement the Spawner contract: "
                f"{', '.join(missing)} missing (see phoebe_spawner.spawners.base)"
            )

    # --- set by the session manager for each session (not config) -------------------
    session_id = Unicode(help="The session this spawner serves.")
    user = Dict(help="The owning user: user_id, name, email, full_name, role, admin.")
    key = Unicode(help="The session's signing key (hex). Reaches the worker only via a 0600 file.")
    session_dir = Unicode(help="The session's own storage directory on the hub's machine.")
    runtime_dir = Unicode(help="A private (0700) directory for connection files and logs.")
    debug = Bool(False, help="Ask the worker to include tracebacks in error replies.")
    exit_with_hub = Bool(
        False,
        help="Ask the worker to exit when the hub process dies (set by the session manager).",
    )
    pooled = Bool(
        False,
        help="""A warm-pool worker, started before it has an owner; the session manager
        binds it to its session (``bind_request``) when it hands it out.""",
    )
    backend = TraitAny(
        None,
        help="""The hub-wide resource :meth:`start_backend` returned (a fork server, a
        client): shared by all spawners of one hub, set by the session manager.""",
    )
    worker_nofile = Integer(
        0,
        help="""The open-files limit a local worker gets (RLIMIT_NOFILE): the hub's own
        from before it raised it for its sessions, so workers do not inherit the raised
        one; 0 = inherit (set by the session manager).""",
    )

    #: open files one session holds in the hub (its 3 ZMQ sockets and their 3 notification
    #: descriptors, and a uid lock when the hub runs as root): the session manager's
    #: capacity arithmetic (phoebe_spawner/sessions/capacity.py); measured per backend
    hub_fds_per_session: ClassVar[int] = 7
    worker_extra = Dict(
        help="""Extra fields for the worker's connection file, read by custom session
        factories (the test factory's fault injection uses it).""",
    ).tag(config=True)
    worker_limits = Dict(
        help="""Cost caps of each PHOEBE worker, overriding the worker's defaults (see
        ``phoebe_kernel_worker.protocol.limits``; docs/configuration.md). Keys:
        ``max_ntriangles`` (ntriangles of any component in any compute; default 5000),
        ``max_mesh_values`` (mesh times x columns, or lp wavelengths, times all stars'
        triangles; default 10000000), ``max_array_length`` (elements of any one array in
        a command or a loaded bundle, and a dataset's times x fti_oversample; default
        1000000). Values are positive integers.""",
    ).tag(config=True)

    @validate("worker_limits")
    def _validate_worker_limits(self, proposal: Any) -> dict[str, Any]:
        try:
            WorkerLimits.from_mapping(proposal.value)
        except ValueError as exc:
            raise TraitError(str(exc)) from None
        return dict(proposal.value)

    # --- configuration ----------------------------------------------------------------
    cmd = List(
        Unicode(),
        help="""The command that starts a worker. The spawner appends
        ``--connection-file PATH`` and its readiness options.""",
    ).tag(config=True)

    @default("cmd")
    def _default_cmd(self) -> list[str]:
        return [sys.executable, "-m", "phoebe_kernel_worker"]

    worker_args = List(
        Unicode(),
        help="Extra arguments after the command, e.g. ['--log-level', 'DEBUG'].",
    ).tag(config=True)

    env_keep = List(
        Unicode(),
        default_value=DEFAULT_ENV_KEEP,
        help="""Environment variables passed from the hub to workers: names, or patterns
        such as ``OPENBLAS_*``. The default keeps the paths and locale, PHOEBE's own
        switches and the numerical libraries' settings (``OPENBLAS_*``, ``OMP_*``,
        ``MKL_*``, ``GOTO*``, ``BLIS_*``, ``VECLIB_*``, ``NUMEXPR_*``), so that workers
        compute exactly what PHOEBE computes in the hub's environment. Everything else is
        withheld, and ``PHOEBE_SPAWNER_*``, ``JUPYTERHUB_*`` and ``JPY_*`` always are.""",
    ).tag(config=True)

    environment = Dict(
        value_trait=Unicode(),
        help="Extra environment variables for workers (values are not secret: workers see them).",
    ).tag(config=True)

    start_timeout = Float(
        60.0,
        help="Seconds a worker may take from start() to bound channels before it is failed.",
    ).tag(config=True)

    mem_limit = ByteSpecification(
        4 * 1024**3,
        allow_none=True,
        help="""Maximum memory of one worker (bytes or '2G'; default 4 GiB); None or 0 for no
        limit. Held by a per-session memory cgroup where the hub can create one (see
        SessionLimits.memory_cgroup), else by RLIMIT_AS on local workers, by the container
        on Docker and by --mem on Slurm; the hub's memory sampling fails a session over it
        everywhere. A worker ended by it fails with "out of memory (limit ...)".""",
    ).tag(config=True)

    max_file_size = ByteSpecification(
        1024**3,
        allow_none=True,
        help="""Largest file a local worker may write (RLIMIT_FSIZE, bytes or '512M'; default
        1 GiB); None or 0 for no limit. A write past it fails in the command (EFBIG).""",
    ).tag(config=True)

    mem_limit_by_cgroup = Bool(
        False,
        help="""Set by the session manager when a memory cgroup holds ``mem_limit``: local
        backends then set no RLIMIT_AS (which counts address space, not memory).""",
    )

    cpu_limit = Float(
        None,
        allow_none=True,
        help="CPU cores one worker may use (backends map it to threads, shares or quotas).",
    ).tag(config=True)

    ip = Unicode(
        "127.0.0.1",
        help="The address workers bind their channels on (must be reachable by the hub).",
    ).tag(config=True)

    port_range = List(
        Integer(),
        default_value=[],
        help="""[low, high] ports workers bind within (inclusive low, exclusive high);
        empty lets the OS choose free ports. The worker picks and reports its ports
        itself, so a port held by another process is never mistaken for a worker.""",
        minlen=0,
        maxlen=2,
    ).tag(config=True)

    @property
    def max_workers(self) -> int | None:
        """Workers this backend, as configured, can run at once on this hub (None: no
        limit of its own; ports are counted apart, from :attr:`port_range`). The app asks
        a spawner built from the configuration, and the capacity arithmetic refuses a
        ``max_sessions`` beyond it at start-up (:mod:`phoebe_spawner.sessions.capacity`)."""
        return None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._progress: list[dict[str, Any]] = []
        self._progress_changed = asyncio.Event()
        self._progress_done = False
        #: where the worker listens: what start() returned, or what load_state() restored
        self.endpoint: WorkerEndpoint | None = None

    # --- the hub-wide backend resource (optional) --------------------------------------

    @classmethod
    async def start_backend(cls, parent: Any, runtime_dir: str) -> Any:
        """Start what all workers of this backend share; called once by the session manager
        at hub start-up. The result is set as :attr:`backend` on every spawner. Returns
        quickly (a slow resource finishes starting in the background). Default: None."""
        return None

    @classmethod
    async def stop_backend(cls, backend: Any) -> None:
        """Stop what :meth:`start_backend` returned; called once at hub shutdown, after the
        workers were stopped (or left for re-adoption)."""

    # --- the contract -----------------------------------------------------------------

    async def start(self) -> WorkerEndpoint:
        """Start the worker; return where it listens once its channels are bound.

        Raise :class:`SpawnError` with a reason if the worker cannot start. The base class
        records the result as :attr:`endpoint`.
        """
        raise NotImplementedError

    async def stop(self, now: bool = False) -> None:
        """Stop the worker and everything it started; ``now`` skips the graceful steps."""
        raise NotImplementedError

    async def poll(self) -> int | None:
        """``None`` while the worker runs (or starts); its integer exit status once gone."""
        raise NotImplementedError

    def watch_exit(self, callback: Callable[[int | None], None]) -> Callable[[], None] | None:
        """Be told when the running worker exits, instead of being polled.

        Called by the session manager's exit watch (``sessions/watch.py``) once the worker
        runs (started or re-adopted). A backend that can see the exit as an event calls
        ``callback(status)`` once, on the event loop, with what :meth:`poll` then returns,
        and returns a function that cancels the watch (idempotent; the manager calls it
        when the session leaves ``running``). ``callback(None)`` means the backend lost
        sight of the worker (e.g. the connection that reported it broke) and the manager
        must poll it from then on. The default returns None: not supported, poll me.
        """
        return None

    def exit_reason(self, status: int) -> str | None:
        """Why the worker exited, when the backend knows more than ``status`` says.

        Called by the session manager after :meth:`poll` (or :meth:`watch_exit`) gave
        ``status``; the failed session's reason is this, or a description of the status
        when None (the default). The Docker backend reports out-of-memory kills and containers
        removed behind the hub's back here; a batch scheduler says "reached its time
        limit" in its own words.
        """
        return None

    def local_pid(self) -> int | None:
        """The worker's process id on the hub's machine, or None (the default) when it is
        not a local process: a container's or a batch job's pid means another process
        here. The hub's cgroups (memory, cpu isolation) place only what this returns."""
        return None

    def bind(self, user: dict[str, Any], session_dir: str) -> None:
        """Give a warm-pool worker (started with ``pooled=True``) its owner and session
        directory; the warm pool calls this after the worker accepted the binding."""
        self.user = user
        self.session_dir = session_dir
        self.pooled = False

    def get_state(self) -> dict[str, Any]:
        """JSON-able state the manager persists to re-adopt the worker after a restart.

        The base class keeps the endpoint; backends add what they need to find the worker.
        """
        return {"endpoint": self.endpoint.to_state()} if self.endpoint else {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned (called on a fresh instance)."""
        # "endpoints": the key earlier versions wrote (the same URLs, plus "port")
        self.endpoint = WorkerEndpoint.from_state(state.get("endpoint") or state.get("endpoints"))

    def clear_state(self) -> None:
        """Forget the worker (called after it stopped for good)."""
        self.endpoint = None

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        """Events while starting: ``{"progress": 0-100, "message": str}``, ending at ready.

        Replays from the first event, so a late subscriber sees all of them.
        """
        index = 0
        while True:
            while index < len(self._progress):
                yield self._progress[index]
                index += 1
            if self._progress_done:
                return
            self._progress_changed.clear()
            await self._progress_changed.wait()

    # --- helpers for subclasses ---------------------------------------------------------

    def emit_progress(self, progress: int, message: str, *, done: bool = False) -> None:
        """Record one progress event (and wake :meth:`progress` readers)."""
        self._progress.append({"progress": progress, "message": message})
        self._progress_done = self._progress_done or done
        self._progress_changed.set()

    def worker_rlimits(self) -> dict[str, int]:
        """The resource limits a local backend sets on its worker, by ``resource`` name
        without the ``RLIMIT_`` prefix: ``AS`` from ``mem_limit`` (unless a cgroup holds
        it), ``FSIZE`` from ``max_file_size`` and ``NOFILE`` from ``worker_nofile``."""
        limits: dict[str, int] = {}
        if self.mem_limit and not self.mem_limit_by_cgroup:
            limits["AS"] = int(self.mem_limit)
        if self.max_file_size:
            limits["FSIZE"] = int(self.max_file_size)
        if self.worker_nofile:
            limits["NOFILE"] = int(self.worker_nofile)
        return limits

    def connection_info(self, *, session_dir: str | None = None, **kwargs: Any) -> ConnectionInfo:
        """The connection info for this session's worker (the backend may override paths)."""
        rng = self.port_range
        return ConnectionInfo(
            session_id=self.session_id,
            key=self.key.encode(),
            session_dir=session_dir or self.session_dir,
            ip=self.ip,
            port_range=(rng[0], rng[1]) if len(rng) == 2 else None,
            debug=self.debug,
            exit_with_parent=self.exit_with_hub,
            pooled=self.pooled,
            extra=dict(self.worker_extra),
            limits=dict(self.worker_limits),
            **kwargs,
        )

    def write_connection_file(self, path: str, info: ConnectionInfo | None = None) -> str:
        """Write the 0600 connection file at ``path``; returns the path."""
        return str(write_connection_file(path, info or self.connection_info()))

    def get_env(self) -> dict[str, str]:
        """The worker's environment: the allow-listed hub variables plus ``environment``.

        ``cpu_limit``, when set, sets the BLAS/OpenMP thread counts (over inherited
        values); ``environment`` overrides everything."""
        env = select_env(os.environ, self.env_keep)
        env.setdefault("PHOEBE_ENABLE_ONLINE_PASSBANDS", "FALSE")
        env["PYTHONUNBUFFERED"] = "1"
        if self.cpu_limit:
            threads = str(max(1, int(self.cpu_limit)))
            env.update(dict.fromkeys(THREAD_VARS, threads))
        env.update(self.environment)
        return env
