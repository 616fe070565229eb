"""The session manager: registry, state machine, limits, routing, death detection, culling.

One :class:`SessionManager` per hub, built by the app and handed to the request
handlers. It owns every live session (:class:`LiveSession`): its spawner, its
persistent channel and its state, which moves ``pending -> running -> stopping ->
stopped`` or ends ``failed`` / ``culled``. Each transition is written to the database
before it is acted on, so a restarted hub can rebuild the picture (:meth:`recover`).

Limits are checked and reserved synchronously on the event loop (no await between
check and reservation), so concurrent start requests cannot overshoot them. Commands
to one session run one at a time; a command that times out is interrupted in the
worker and the session stays usable, and a worker that ignores the interrupt is
declared hung and stopped. Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import zmq.asyncio
from traitlets import Any as AnyTrait
from traitlets import Bool, Dict, Float, Integer, List, Set, Unicode
from traitlets.config import LoggingConfigurable

from phoebe_kernel_worker import protocol
from phoebe_kernel_worker.protocol import Message

from ..auth.base import User
from ..channels import ChannelError, Reply, WorkerChannel, WorkerEndpoint
from ..db import DatabaseUnavailable, Store
from ..errors import (
    LimitReached,
    NotOwner,
    RateLimited,
    SessionNotFound,
    Unavailable,
)
from ..ratelimit import RateLimiter
from ..spawners.base import SpawnCapacityError, Spawner, SpawnError
from . import culling, endings, execution, memory, recovery
from .cpu import CpuClasses
from .limits import SessionLimits
from .pool import PooledWorker, WarmPool
from .session import ACTIVE, LiveSession, user_dir_name
from .userlimits import port_status, session_limit

#: ``(session, command, seconds, error)`` after each command; see add_command_listener
CommandListener = Callable[[LiveSession, str, float, str | None], None]


class SessionManager(LoggingConfigurable):
    """Owns all sessions of one hub. Built by the app; called by the request handlers."""

    max_sessions_per_user = Integer(
        4, help="Sessions one user may have at once (0 = unlimited; not in auth mode none)."
    ).tag(config=True)
    user_session_limits = Dict(
        key_trait=Unicode(),
        value_trait=Integer(min=0),
        help="""Per-user session limits over max_sessions_per_user, by user name, id or
        email, or by group as "group:<name>" (JupyterHub groups, in hub mode), e.g.
        {"ada@example.org": 16, "group:staff": 8}. A user's own entry wins, else their
        most generous group's; 0 = unlimited.""",
    ).tag(config=True)
    start_rate_per_minute = Float(
        30.0, help="Session starts a user may make per minute (0 = unlimited; not in mode none)."
    ).tag(config=True)
    start_burst = Integer(10, help="Session starts a user may make at once.").tag(config=True)
    max_sessions = Integer(
        100, help="Sessions the hub runs at once, all users together (the capacity)."
    ).tag(config=True)
    idle_timeout = Float(
        1800.0, help="Seconds without a command after which a session is culled (0 = never)."
    ).tag(config=True)
    cull_interval = Float(60.0, help="Seconds between idle-culling passes.").tag(config=True)
    max_age = Float(
        0.0,
        help="""Seconds after which a session is culled however busy its user is (after a
        checkpoint, and never in the middle of a command); 0 = no maximum age.""",
    ).tag(config=True)
    cull_exempt_users = Set(
        Unicode(), help="User names (or ids) whose sessions are never culled."
    ).tag(config=True)
    cull_exempt_groups = Set(
        Unicode(), help="Groups whose members' sessions are never culled."
    ).tag(config=True)
    poll_interval = Float(
        1.0, help="Seconds between checks that workers are alive (dead ones -> failed)."
    ).tag(config=True)
    memory_interval = Float(
        30.0, help="Seconds between memory samples of each running session."
    ).tag(config=True)
    command_timeout = Float(
        600.0,
        help="""Default seconds a /send command may run before it is interrupted (504); a
        worker that ignores the interrupt for interrupt_grace is stopped and its session
        fails. Long computations belong in jobs (JobManager.job_timeout).""",
    ).tag(config=True)
    command_timeouts = Dict(
        value_trait=Float(),
        default_value={"ping": 30.0},
        help="Per-command timeouts in seconds, overriding command_timeout.",
    ).tag(config=True)
    interrupt_grace = Float(
        10.0,
        help="""Seconds a worker has to stop a timed-out command after the interrupt before
        it is declared hung and terminated.""",
    ).tag(config=True)
    failed_linger = Float(
        3600.0, help="Seconds a failed session stays listed (with its reason) before it is dropped."
    ).tag(config=True)
    stop_workers_on_shutdown = Bool(
        True,
        help="""Stop all workers when the hub shuts down. If False they keep running and are
        re-adopted when the hub starts again.""",
    ).tag(config=True)
    readopt_workers = Bool(
        True,
        help="""Re-adopt workers a previous hub left running (after a crash or a shutdown
        with stop_workers_on_shutdown=False). If False, workers exit when the hub dies
        and a starting hub stops whatever is left and marks those sessions failed.""",
    ).tag(config=True)
    recover_ping_timeout = Float(
        5.0, help="Seconds a re-adopted worker has to answer an authenticated ping."
    ).tag(config=True)
    warm_pool_size = Integer(
        0,
        help="""Ready, unassigned workers kept for instant session starts (0 = none). They
        count toward ``max_sessions``; see docs/performance.md.""",
    ).tag(config=True)
    cpu_isolation = Bool(
        False,
        help="""Put each local worker in a cgroup of its own and mark it ``cpu.idle`` while
        it runs one of ``background_commands``, so the hub and other sessions' commands
        preempt it at once (needs a writable cgroup ``cpu`` tree: root, or a delegated
        one; see phoebe_spawner/cpuclass.py and docs/performance.md).""",
    ).tag(config=True)
    cpu_cgroup_parent = Unicode(
        "",
        help="""The cgroup directory to build the cpu isolation tree in (e.g.
        /sys/fs/cgroup/system.slice/phoebe.service); empty: the hub's own cgroup.""",
    ).tag(config=True)
    background_commands = Set(
        {"run_compute", "run_solver"},
        help="Commands a session runs in the background CPU class (with cpu_isolation).",
    ).tag(config=True)
    per_user_limits = Bool(
        True,
        help="""Whether per-user session limits and start rates apply (set by the app: not
        in auth mode none, where one person uses the hub).""",
    )
    data_dir = Unicode(help="Where session storage and runtime directories live (set by the app).")
    debug = Bool(False, help="Ask workers for tracebacks in error replies (set by the app).")

    store = AnyTrait(help="The Store (set by the app).")
    before_stop = AnyTrait(
        None,
        allow_none=True,
        help="""Coroutine function ``(session, reason)`` run before the hub stops a running
        session itself (cull, shutdown): the app sets the checkpoint manager's. If it
        raises, a cull is not carried out.""",
    )
    spawner_class = AnyTrait(help="The Spawner subclass (set by the app).")
    port_range = List(Integer(), help="The spawners' port range, if any (set by the app).")
    secret = AnyTrait(help="The hub secret bytes that session keys derive from (set by the app).")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sessions: dict[str, LiveSession] = {}
        self.zmq_ctx = zmq.asyncio.Context()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._listeners: list[Callable[[str, LiveSession], None]] = []
        self._iopub_listeners: list[Callable[[LiveSession, Message], None]] = []
        self._command_listeners: list[CommandListener] = []
        self._sample_listeners: list[Callable[[list[LiveSession]], None]] = []
        #: open user event streams per user id (the stream handler counts them)
        self.watchers: Counter[str] = Counter()
        self._start_limiter = RateLimiter(self.start_rate_per_minute, self.start_burst)
        self._closing = False
        #: what the spawner class shares across its workers (a fork server), see start_backend
        self.backend: Any = None
        self.pool = WarmPool(self, self.warm_pool_size)
        #: the cgroup tree of cpu_isolation, once set up (start_backend)
        self.cpu: CpuClasses | None = None
        #: memory groups, disk quota and clean-up of ended sessions (c.SessionLimits)
        self.limits = SessionLimits(self, parent=self, log=self.log)

    @property
    def _store(self) -> Store:
        return self.store  # type: ignore[no-any-return]

    # --- lifecycle of the manager --------------------------------------------------------

    async def start_backend(self) -> None:
        """Start the spawner class's shared resource (e.g. the fork server) and stop the
        warm-pool workers a crashed hub left; the app calls this before :meth:`recover`."""
        await self.limits.setup()
        if self.cpu_isolation:
            # first: the fork server (and every worker) starts in the hub's group
            self.cpu = await asyncio.to_thread(
                CpuClasses.setup, self.cpu_cgroup_parent, self.data_dir
            )
            if self.cpu is not None:
                self.add_listener(self.cpu.on_session_event)
        self.backend = await self.spawner_class.start_backend(
            self, str(Path(self.data_dir) / "runtime")
        )
        await self.pool.reap_leftovers()

    def start_background_tasks(self) -> None:
        """Start the poll, memory and cull loops and fill the warm pool (the app calls this
        once the loop runs, after recovery)."""
        self.add_listener(lambda event, s: self.pool.fill())
        self.pool.fill()
        self._tasks = [
            asyncio.create_task(self._every(self.poll_interval, self.poll_all), name="poll"),
            asyncio.create_task(self._every(self.memory_interval, self.sample_all), name="mem"),
            asyncio.create_task(self._every(self.cull_interval, self.cull_idle), name="cull"),
            asyncio.create_task(
                self._every(self.limits.disk_interval, self.limits.check_disk), name="disk"
            ),
        ]

    async def _every(self, interval: float, fn: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await fn()
            except Exception:
                self.log.exception("background task %s failed; it will run again", fn.__name__)

    def spawn_task(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, keeping a reference until it is done."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def add_listener(self, listener: Callable[[str, LiveSession], None]) -> None:
        """Call ``listener(event, session)`` on started/stopped/failed/culled events."""
        self._listeners.append(listener)

    def add_command_listener(self, listener: CommandListener) -> None:
        """Call ``listener(session, command, seconds, error)`` after every command (``error``
        is None on success, else ``"timeout"`` or the worker's error status)."""
        self._command_listeners.append(listener)

    def add_sample_listener(self, listener: Callable[[list[LiveSession]], None]) -> None:
        """Call ``listener(sessions)`` after each round of memory samples."""
        self._sample_listeners.append(listener)

    def add_iopub_listener(self, listener: Callable[[LiveSession, Message], None]) -> None:
        """Call ``listener(session, message)`` for every iopub message of every session."""
        self._iopub_listeners.append(listener)

    def connect(self, s: LiveSession, endpoint: WorkerEndpoint) -> WorkerChannel:
        """Open the session's channel and route its iopub messages to the listeners."""
        channel = WorkerChannel(self.zmq_ctx, s.id, self._key(s.id), endpoint)
        channel.connect()
        channel.add_iopub_handler(lambda msg: self._dispatch_iopub(s, msg))
        s.channel = channel
        pid = s.spawner.local_pid()  # None unless the worker is a process of this machine
        if pid is not None:
            self.limits.place(s, pid)
        if self.cpu is not None and pid is not None:
            # moving a process can wait on the kernel's cgroup locks: not on the loop
            self.spawn_task(asyncio.to_thread(self.cpu.place, s.id, pid))
        return channel

    def _dispatch_iopub(self, s: LiveSession, msg: Message) -> None:
        for listener in self._iopub_listeners:
            listener(s, msg)

    def emit(self, event: str, session: LiveSession) -> None:
        for listener in list(self._listeners):
            try:
                listener(event, session)
            except Exception:
                self.log.exception("session listener failed")

    async def shutdown(self) -> None:
        """Stop the loops; stop workers or leave them for re-adoption (config)."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.pool.stop()
        live = [s for s in self.sessions.values() if s.status in ACTIVE]
        if self.stop_workers_on_shutdown:
            if self.before_stop is not None:
                results = await asyncio.gather(
                    *(self.before_stop(s, "shutdown") for s in live), return_exceptions=True
                )
                for s, result in zip(live, results, strict=True):
                    if isinstance(result, BaseException):
                        self.log.error("no checkpoint of session %s at shutdown: %s", s.id, result)
            await asyncio.gather(
                *(self.stop_session(s, "stopped", "hub shutdown") for s in live),
                return_exceptions=True,
            )
        else:
            for s in live:
                await self.persist_activity(s)
                if s.channel:
                    await s.channel.close()
            self.log.info("left %d workers running for re-adoption", len(live))
        await self.spawner_class.stop_backend(self.backend)
        await self.limits.close()
        if self.cpu is not None:
            await asyncio.to_thread(self.cpu.close)
        self.zmq_ctx.destroy(linger=0)

    # --- paths and spawners ------------------------------------------------------------------

    def session_dir(self, user_id: str, session_id: str) -> str:
        return str(Path(self.data_dir) / "sessions" / user_dir_name(user_id) / session_id)

    def runtime_dir(self, session_id: str) -> str:
        return str(Path(self.data_dir) / "runtime" / session_id)

    def make_spawner(self, session_id: str, user: User) -> Spawner:
        spawner: Spawner = self.spawner_class(
            parent=self,
            session_id=session_id,
            user=user.to_dict(),
            key=self._key(session_id).decode(),
            session_dir=self.session_dir(user.user_id, session_id),
            runtime_dir=self.runtime_dir(session_id),
            debug=self.debug,
            exit_with_hub=not self.readopt_workers,
            backend=self.backend,
        )
        self.limits.configure(spawner)
        return spawner

    def _key(self, session_id: str) -> bytes:
        return protocol.derive_session_key(self.secret, session_id)

    # --- queries ------------------------------------------------------------------------------

    def get_owned(self, user: User, session_id: str) -> LiveSession:
        """The session if ``user`` owns it: 404 if unknown, 403 if someone else's."""
        s = self.sessions.get(session_id)
        if s is None:
            raise SessionNotFound(f"Session {session_id} not found")
        if s.user.user_id != user.user_id:
            raise NotOwner("Session belongs to another user")
        return s

    def list_for(self, user: User) -> list[LiveSession]:
        return [s for s in self.sessions.values() if s.user.user_id == user.user_id]

    def active(self) -> list[LiveSession]:
        return [s for s in self.sessions.values() if s.status in ACTIVE]

    @property
    def capacity_limit(self) -> int:
        """Sessions that can run at once: ``max_sessions``, and at most a third of a
        configured port range (each worker binds three ports)."""
        ports = self.port_range
        if len(ports) == 2:
            return min(self.max_sessions, max(0, (ports[1] - ports[0]) // len(protocol.CHANNELS)))
        return self.max_sessions

    def session_limit(self, user: User) -> int:
        """Sessions ``user`` may run at once (0: no per-user limit; see limits.py)."""
        if not self.per_user_limits:
            return 0
        return session_limit(user, self.max_sessions_per_user, self.user_session_limits)

    def capacity(self, user: User | None = None) -> dict[str, Any]:
        """``/dash/port-status``: the hub's capacity (``user=None``, for admins) or only
        ``user``'s own sessions against their limit (:func:`limits.port_status`)."""
        limit = None if user is None else self.session_limit(user)
        mine = None if user is None else user.user_id
        return port_status(self.active(), self.capacity_limit, self.port_range, mine, limit)

    # --- start ---------------------------------------------------------------------------------

    async def start_session(
        self,
        user: User,
        meta: dict[str, Any] | None,
        *,
        client_ip: str | None = None,
        user_agent: str | None = None,
    ) -> LiveSession:
        """Start a worker for ``user``; returns once it answers commands."""
        meta = dict(meta or {})
        if self._closing:
            raise Unavailable("The hub is shutting down")
        wait = self._start_limiter.hit(user.user_id) if self.per_user_limits else 0.0
        if wait:
            raise RateLimited(f"Too many session starts; try again in {wait:.0f} s", wait)
        # check and reserve with no await in between: concurrent starts cannot overshoot
        active = self.active()
        if self.capacity_limit and len(active) >= self.capacity_limit:
            raise LimitReached(f"Capacity reached: {self.capacity_limit} sessions are running")
        mine = [s for s in active if s.user.user_id == user.user_id]
        limit = self.session_limit(user)
        if limit and len(mine) >= limit:
            raise LimitReached(f"Session limit reached: at most {limit} per user")
        pooled = self.pool.take()
        full = self.capacity_limit and len(active) + self.pool.count() >= self.capacity_limit
        if pooled is None and full:
            self.pool.give_way()  # a starting pool worker frees its slot for this user
        session_id = pooled.session_id if pooled else str(uuid.uuid4())
        spawner = pooled.spawner if pooled else self.make_spawner(session_id, user)
        s = LiveSession(id=session_id, user=user, meta=meta, spawner=spawner)
        self.sessions[session_id] = s
        try:
            await self._store.create_session(
                id=session_id,
                user_id=user.user_id,
                user_name=user.name,
                full_name=user.full_name,
                status="pending",
                spawner_class=f"{type(s.spawner).__module__}.{type(s.spawner).__name__}",
                meta=meta,
                project_name=s.project_name,
                client_ip=client_ip,
                user_agent=(user_agent or "")[:512] or None,
                created_at=s.created_at,
                last_activity=s.last_activity,
            )
        except DatabaseUnavailable as e:
            del self.sessions[session_id]
            if pooled is not None:
                self.pool.discard(pooled)
            raise Unavailable(f"Database unavailable: {e}") from None
        await self._launch(s, pooled)
        return s

    async def _launch(self, s: LiveSession, pooled: PooledWorker | None = None) -> None:
        try:
            await self._launch_inner(s, pooled)
        finally:
            s.launched.set()

    async def _start_worker(self, s: LiveSession, pooled: PooledWorker | None) -> WorkerEndpoint:
        """The worker's endpoint: a warm-pool worker bound to ``s``, or a fresh start."""
        if pooled is not None:
            try:
                return await self.pool.hand_out(pooled, s)
            except ChannelError as e:
                self.log.warning("warm-pool worker %s was unusable (%s); starting one", s.id, e)
                s.spawner = self.make_spawner(s.id, s.user)
        return await s.spawner.start()

    async def _launch_inner(self, s: LiveSession, pooled: PooledWorker | None) -> None:
        t0 = time.perf_counter()
        try:
            endpoint = await self._start_worker(s, pooled)
            channel = self.connect(s, endpoint)
            status = await channel.control(protocol.STATUS_REQUEST, timeout=s.spawner.start_timeout)
        except SpawnCapacityError as e:
            await self.fail(s, f"No capacity for a worker: {e}")
            raise LimitReached(s.reason or "No capacity for a worker") from None
        except (SpawnError, ChannelError) as e:
            await self.fail(s, f"Worker failed to start: {e}")
            raise Unavailable(s.reason or "Worker failed to start") from None
        except asyncio.CancelledError:
            await self.fail(s, "Start was cancelled")
            raise
        except Exception:
            self.log.exception("starting session %s failed", s.id)
            await self.fail(s, "Worker failed to start (see the hub log)")
            raise Unavailable(s.reason or "Worker failed to start") from None
        s.port = endpoint.port
        s.status = "running"
        s.mem_used = float(status.get("rss_mib") or 0.0)
        s.last_activity = s.started_at = time.time()
        self.log.info(
            "session %s of %s running (%.0f ms)",
            s.id,
            s.user.name,
            1000 * (time.perf_counter() - t0),
        )
        await self.write(
            s,
            status="running",
            port=s.port,
            started_at=s.started_at,
            spawner_state=s.spawner.get_state(),
            last_activity=s.last_activity,
        )
        self.emit("started", s)

    # --- commands ---------------------------------------------------------------------------

    async def send(self, user: User, session_id: str, body: bytes, command: str) -> Reply:
        """Route one command to the user's worker; returns the worker's reply verbatim.

        ``ping`` is answered from the control channel (the worker's status), so it does
        not wait behind a long command; every other command waits its turn.
        """
        s = self.get_owned(user, session_id)
        self.check_running(s)
        if command == "ping" and s.lock.locked():
            return await execution.control_ping(s)
        timeout = self.command_timeouts.get(command, self.command_timeout)
        return await self.execute(s, body, command, timeout=timeout)

    async def execute(
        self,
        s: LiveSession,
        body: bytes,
        command: str,
        *,
        timeout: float | None,
        on_sent: Callable[[str], None] | None = None,
        activity: bool = True,
        count_wait: bool = True,
    ) -> Reply:
        """Run one command on ``s`` in its turn (see :func:`phoebe_spawner.execution.execute`:
        timeouts, ``on_sent``, ``activity``, ``count_wait``)."""
        return await execution.execute(
            self,
            s,
            body,
            command,
            timeout=timeout,
            on_sent=on_sent,
            activity=activity,
            count_wait=count_wait,
        )

    def check_running(self, s: LiveSession) -> None:
        """Raise 503 unless the session is running with a connected channel."""
        if s.status == "running" and s.channel is not None:
            return
        if s.status == "failed":
            raise Unavailable(f"Session {s.id} has failed: {s.reason}")
        raise Unavailable(f"Session {s.id} is {s.status}")

    # --- memory ---------------------------------------------------------------------------------

    async def sample(self, s: LiveSession) -> float:
        """The session's current memory in MiB (:func:`phoebe_spawner.memory.sample`)."""
        return await memory.sample(s)

    async def sample_all(self) -> None:
        """Memory loop: :func:`phoebe_spawner.memory.sample_all`."""
        await memory.sample_all(self)

    def notify_sampled(self, sessions: list[LiveSession]) -> None:
        """Tell the sample listeners that ``sessions`` have fresh memory samples."""
        for listener in list(self._sample_listeners):
            try:
                listener(sessions)
            except Exception:
                self.log.exception("sample listener failed")

    # --- death detection and culling --------------------------------------------------------------

    async def poll_all(self) -> None:
        """Poll loop: :func:`phoebe_spawner.endings.poll_all`."""
        await endings.poll_all(self)

    async def cull_idle(self) -> None:
        """Cull loop: see :func:`phoebe_spawner.culling.cull_idle`."""
        await culling.cull_idle(self)

    async def persist_activity(self, s: LiveSession) -> None:
        if s.last_activity > s.persisted_activity:
            try:
                await self._store.update_session(s.id, last_activity=s.last_activity)
                s.persisted_activity = s.last_activity
            except (DatabaseUnavailable, KeyError):
                pass

    # --- stop ----------------------------------------------------------------------------------

    async def end_session(
        self, user: User, session_id: str, *, reason: str = "ended by user"
    ) -> None:
        """Stop the user's session (``POST /dash/end-session``, or an admin for them)."""
        s = self.get_owned(user, session_id)
        if s.status in ("failed", "stopped", "culled"):
            self.sessions.pop(s.id, None)
            return
        await self.stop_session(s, "stopped", reason)

    async def stop_session(self, s: LiveSession, final: str, reason: str) -> None:
        """Stop a session once; concurrent callers wait for the same stop."""
        if s.status == "pending":
            await s.launched.wait()  # stop what the start created, never race it
        if s.stop_task is None:
            if s.status not in ACTIVE:
                return
            try:
                await self._store.update_session(s.id, status="stopping")
            except DatabaseUnavailable as e:
                raise Unavailable(f"Database unavailable: {e}") from None
            if s.stop_task is None:
                s.status = "stopping"
                s.reason = reason
                self.emit("stopping", s)
                s.stop_task = asyncio.create_task(self._do_stop(s, final, reason))
        await asyncio.shield(s.stop_task)

    async def _do_stop(self, s: LiveSession, final: str, reason: str) -> None:
        await endings.do_stop(self, s, final, reason)

    async def fail(self, s: LiveSession, reason: str) -> None:
        """Mark a session failed with ``reason`` and clean up its worker."""
        if s.status in ("failed", "stopped", "culled"):
            return
        self.log.warning("session %s of %s failed: %s", s.id, s.user.name, reason)
        s.status = "failed"
        s.reason = reason
        s.ended_at = time.time()
        # finish even if the caller is cancelled (the poll loop at shutdown): shutdown
        # waits for background tasks, so no worker is left half cleaned up
        task = asyncio.ensure_future(endings.clean_up_failed(self, s, reason))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        await asyncio.shield(task)

    async def write(self, s: LiveSession, **fields: Any) -> None:
        """Best-effort state write for transitions that already happened."""
        try:
            await self._store.update_session(s.id, **fields)
        except (DatabaseUnavailable, KeyError) as e:
            self.log.warning(
                "could not record %s for session %s: %s", fields.get("status"), s.id, e
            )

    # --- recovery ---------------------------------------------------------------------------------

    async def recover(self, users: Callable[[dict[str, Any]], User]) -> None:
        """Re-adopt what a previous hub left running (:func:`phoebe_spawner.recovery.recover`)."""
        await recovery.recover(self, users)
