"""The session manager: the registry, limits, the loops, and start/stop orchestration.

One :class:`SessionManager` per hub, built by the app, called by the handlers. It keeps
every live :class:`~.session.Session` (``sessions``), checks and reserves limits when
one starts (no await between check and reservation, so concurrent starts cannot
overshoot), starts its worker (fresh, or from the warm pool) and runs the loops: death
detection (:mod:`.watch`), memory samples (:mod:`.memory`), culling
(:class:`~.policy.CullPolicy`), disk quotas. One session's commands, status and ending
are its own; the collaborators (pool, recovery, limits, cpu) get narrow interfaces, and
whoever follows sessions subscribes to :attr:`SessionManager.bus`. Nothing here blocks
the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq.asyncio
from traitlets import Any as AnyTrait
from traitlets import Bool, Dict, Float, Integer, List, Set, Unicode
from traitlets.config import LoggingConfigurable

from phoebe_kernel_worker import protocol
from phoebe_kernel_worker.protocol.frames import Buffers

from ..auth.base import User
from ..channels import ChannelError, Reply, WorkerChannel, WorkerEndpoint
from ..errors import LimitReached, NotOwner, RateLimited, SessionNotFound, Unavailable
from ..ratelimit import RateLimiter
from ..spawners.base import Spawner, SpawnError
from ..store import DatabaseUnavailable
from .bus import EventBus, SessionChanged
from .capacity import HubCapacity
from .cpu import CpuClasses
from .culling import cull_pass
from .endings import Endings
from .limits import SessionLimits
from .memory import MemorySampler
from .policy import CapacityPlan, CullPolicy, port_status, session_limit
from .pool import PooledWorker, WarmPool
from .recovery import Recovery
from .services import SessionServices, Tasks
from .session import ACTIVE, ENDED, OWNER, OWNER_REASON, Session, session_dir
from .watch import ExitWatch


class SessionManager(LoggingConfigurable):
    """Owns all sessions of one hub. Built by the app; called by the request handlers,
    the job manager and the checkpoint manager."""

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
        100,
        help="""Sessions the hub runs at once, all users together (the capacity). The hub
        raises its open-files and ZMQ socket limits to hold them, or refuses to start.""",
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
        1.0,
        help="""Seconds between polls of the workers whose backend cannot report their exit
        (Docker, Slurm, no pidfds); local and forked workers fail as soon as they exit.""",
    ).tag(config=True)
    memory_interval = Float(
        30.0, help="Seconds between memory samples of each running session (spread across it)."
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
    ended_linger = Float(
        None,
        allow_none=True,
        help="""Seconds a session the hub or an admin ended (culled, past max_age, ended by an
        admin, hub shutdown) stays listed with its reason and checkpoint, and commands to it
        answer 410 (docs/api.md), also after a hub restart; None: failed_linger. A session
        its owner ended is forgotten at once (404).""",
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
        True,
        help="""Put each local worker in a cgroup of its own, ``cpu.idle`` while it runs one
        of ``background_commands``, so other commands preempt it at once. Needs a writable
        cgroup ``cpu`` tree (root, or delegated) and Linux >= 5.15; without one the hub
        logs one line and runs without (False: off, no line). See docs/performance.md.""",
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
        #: the registry: every live session (and ended ones while they linger), by id
        self.sessions: dict[str, Session] = {}
        #: session events: subscribe by type (see :mod:`.bus`)
        self.bus = EventBus()
        self.zmq_ctx = zmq.asyncio.Context()
        self.os_capacity = HubCapacity(self.spawner_class, self.zmq_ctx, self.bus, self.log)
        self.tasks = Tasks()
        self._loops: list[asyncio.Task[None]] = []
        #: open user event streams per user id (the stream handler counts them)
        self.watchers: Counter[str] = Counter()
        self._start_limiter = RateLimiter(self.start_rate_per_minute, self.start_burst)
        self._closing = False
        #: what the spawner class shares across its workers (a fork server), see start_backend
        self.backend: Any = None
        self.pool = WarmPool(
            self.warm_pool_size,
            self.data_dir,
            make_spawner=self.make_spawner,
            slots_left=self._slots_left,
            zmq_ctx=self.zmq_ctx,
            log=self.log,
        )
        #: the cgroup tree of cpu_isolation, once set up (start_backend)
        self.cpu: CpuClasses | None = None
        #: memory groups, disk quota and clean-up of ended sessions (c.SessionLimits)
        self.limits = SessionLimits(self.data_dir, parent=self, log=self.log)
        self.cull_policy = CullPolicy(
            idle_timeout=self.idle_timeout,
            max_age=self.max_age,
            exempt_users=frozenset(self.cull_exempt_users),
            exempt_groups=frozenset(self.cull_exempt_groups),
        )
        self.services = SessionServices(
            store=self.store,
            bus=self.bus,
            log=self.log,
            tasks=self.tasks,
            interrupt_grace=self.interrupt_grace,
            background_commands=frozenset(self.background_commands),
        )
        self._over_quota: set[str] = set()
        #: linger times, end log lines, ended sessions after a restart (:mod:`.endings`)
        self.endings = Endings(
            self.store, self.log, failed_linger=self.failed_linger, ended_linger=self.ended_linger
        )
        self.bus.subscribe(SessionChanged, lambda c: self.endings.on_change(c, self.sessions))
        self.bus.subscribe(SessionChanged, self.limits.on_session_changed)
        #: death detection: by event where the backend can tell, else polled (:mod:`.watch`)
        self.exits = ExitWatch(self.limits, self.tasks, max(1.0, self.poll_interval * 5), self.log)
        #: the memory loop's rounds, spread over memory_interval (:mod:`.memory`)
        self.sampler = MemorySampler(self.store, self.bus, log=self.log)

    # --- lifecycle of the manager --------------------------------------------------------

    def fit_capacity(
        self,
        connections: int,
        check: Callable[[CapacityPlan], None],
        workers: int | None = None,
    ) -> None:
        """:meth:`.capacity.HubCapacity.fit`, for a backend that runs at most ``workers``
        (the spawner's ``max_workers``); the app calls it before :meth:`start_backend`."""
        self.os_capacity.fit(self.max_sessions, self.warm_pool_size, connections, check, workers)

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
                self.services.cpu = self.cpu
                self.bus.subscribe(SessionChanged, self.cpu.on_session_changed)
        self.backend = await self.spawner_class.start_backend(
            self, str(Path(self.data_dir) / "runtime")
        )
        await self.pool.reap_leftovers()

    def start_background_tasks(self) -> None:
        """Watch the running workers' exits, start the poll, memory, cull and disk loops and
        fill the warm pool (the app calls this once the loop runs, after recovery)."""
        self.bus.subscribe(SessionChanged, self.exits.on_session_changed)
        for s in self._running():  # re-adopted before the bus was followed
            self.exits.watch(s)
        self.bus.subscribe(SessionChanged, lambda change: self.pool.fill())
        self.pool.fill()
        self._loops = [
            asyncio.create_task(self._every(self.poll_interval, self.poll_all), name="poll"),
            asyncio.create_task(
                self.sampler.run_forever(self._running, self.memory_interval), name="mem"
            ),
            asyncio.create_task(self._every(self.cull_interval, self.cull_idle), name="cull"),
            asyncio.create_task(
                self._every(self.limits.disk_interval, self.check_disk), name="disk"
            ),
        ]

    async def _every(self, interval: float, fn: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await fn()
            except Exception:
                self.log.exception("background task %s failed; it will run again", fn.__name__)

    def connect(self, s: Session, endpoint: WorkerEndpoint) -> WorkerChannel:
        """Open the session's channel and put a local worker in its cgroups."""
        channel = WorkerChannel(self.zmq_ctx, s.id, self._key(s.id), endpoint)
        channel.connect()
        s.connect(channel)
        pid = s.spawner.local_pid()  # None unless the worker is a process of this machine
        if pid is not None:
            self.limits.place(s, pid)
            if self.cpu is not None:
                # moving a process can wait on the kernel's cgroup locks: not on the loop
                self.tasks.spawn(asyncio.to_thread(self.cpu.place, s.id, pid))
        return channel

    async def shutdown(self) -> None:
        """Stop the loops; stop workers or leave them for re-adoption (config)."""
        self._closing = True
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self.exits.close()
        await self.tasks.wait()
        await self.pool.stop()
        live = self.active()
        if self.stop_workers_on_shutdown:
            await self.endings.stop_all(live, self.before_stop)
        else:
            for s in live:
                await s.persist_activity()
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
        """Where a session's storage lives."""
        return session_dir(self.data_dir, user_id, session_id)

    def runtime_dir(self, session_id: str) -> str:
        """Where a session's worker keeps its connection and runtime files."""
        return str(Path(self.data_dir) / "runtime" / session_id)

    def make_spawner(self, session_id: str, user: User) -> Spawner:
        """A spawner of the configured class for one session (or a pool worker)."""
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
            worker_nofile=self.os_capacity.worker_nofile,
        )
        self.limits.configure(spawner)
        return spawner

    def _key(self, session_id: str) -> bytes:
        return protocol.derive_session_key(self.secret, session_id)

    # --- queries ------------------------------------------------------------------------------

    def get_owned(self, user: User, session_id: str) -> Session:
        """The session if ``user`` owns it: 404 if unknown, 403 if someone else's."""
        s = self.sessions.get(session_id)
        if s is None:
            raise SessionNotFound(f"Session {session_id} not found")
        if s.user.user_id != user.user_id:
            raise NotOwner("Session belongs to another user")
        return s

    async def find(self, user: User, session_id: str) -> Session:
        """:meth:`get_owned`, but an id not in the registry is looked up in the store: 410
        for a session the hub or an admin ended within its linger time, else 404."""
        if session_id not in self.sessions:
            raise await self.endings.missing(user, session_id)
        return self.get_owned(user, session_id)

    def list_for(self, user: User) -> list[Session]:
        """``user``'s sessions, live and recently ended (by the hub or an admin)."""
        return [s for s in self.sessions.values() if s.user.user_id == user.user_id]

    def active(self) -> list[Session]:
        """The sessions that hold (or are about to hold, or still hold) a worker."""
        return [s for s in self.sessions.values() if s.status in ACTIVE]

    @property
    def capacity_limit(self) -> int:
        """Sessions that can run at once (:meth:`.capacity.HubCapacity.limit`)."""
        return self.os_capacity.limit(self.max_sessions, self.port_range)

    def _slots_left(self) -> int | None:
        """Workers the hub still has room for (the warm pool's view; None: no limit)."""
        limit = self.capacity_limit
        return limit - len(self.active()) if limit else None

    def session_limit(self, user: User) -> int:
        """Sessions ``user`` may run at once (0: no per-user limit; see policy.py)."""
        if not self.per_user_limits:
            return 0
        return session_limit(user, self.max_sessions_per_user, self.user_session_limits)

    def capacity(self, user: User | None = None) -> dict[str, Any]:
        """``/dash/port-status``: the hub's capacity (``user=None``, for admins) or only
        ``user``'s own sessions against their limit (:func:`.policy.port_status`)."""
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
    ) -> Session:
        """Start a worker for ``user``; returns once it answers commands."""
        meta = dict(meta or {})
        if self._closing:
            raise Unavailable("The hub is shutting down")
        wait = self._start_limiter.hit(user.user_id) if self.per_user_limits else 0.0
        if wait:
            raise RateLimited(f"Too many session starts; try again in {wait:.0f} s", wait)
        # check and reserve with no await in between: concurrent starts cannot overshoot
        active = self.active()
        self.os_capacity.check(active, self.max_sessions, self.port_range)  # 429: capacity
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
        s = Session(session_id, user, meta, spawner, self.services)
        self.sessions[session_id] = s
        try:
            await self.store.create_session(
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
            raise Unavailable(f"Database unavailable: {e}", retry_after=1) from None
        try:
            await self._launch(s, pooled)
        finally:
            s.launched.set()
        return s

    async def _start_worker(self, s: Session, pooled: PooledWorker | None) -> WorkerEndpoint:
        """The worker's endpoint: a warm-pool worker bound to ``s``, or a fresh start."""
        if pooled is not None:
            try:
                return await self.pool.hand_out(pooled, s, self.session_dir(s.user.user_id, s.id))
            except ChannelError as e:
                self.log.warning("warm-pool worker %s was unusable (%s); starting one", s.id, e)
                s.spawner = self.make_spawner(s.id, s.user)
        return await s.spawner.start()

    async def _launch(self, s: Session, pooled: PooledWorker | None) -> None:
        t0 = time.perf_counter()
        starting = self.cpu.starting() if self.cpu is not None else contextlib.nullcontext()
        try:
            with starting:  # a burst of starts runs ahead of the sessions' commands
                endpoint = await self._start_worker(s, pooled)
                channel = self.connect(s, endpoint)
                status = await channel.control(
                    protocol.STATUS_REQUEST, timeout=s.spawner.start_timeout
                )
        except asyncio.CancelledError:
            await s.fail("Start was cancelled")
            raise
        except Exception as e:
            if (full := self.os_capacity.start_failed(e, len(self.active()) - 1)) is not None:
                await s.fail(f"No capacity for a worker: {full}")  # 429, no traceback
                raise LimitReached(s.reason or "No capacity for a worker") from None
            if isinstance(e, SpawnError | ChannelError):
                await s.fail(f"Worker failed to start: {e}")
            else:
                self.log.exception("starting session %s failed", s.id)
                await s.fail("Worker failed to start (see the hub log)")
            raise Unavailable(s.reason or "Worker failed to start") from None
        await s.started(endpoint.port, status)
        self.log.info(
            "session %s of %s started (%.0f ms)",
            s.id,
            s.user.name,
            1000 * (time.perf_counter() - t0),
        )

    # --- commands ---------------------------------------------------------------------------

    async def send(
        self, user: User, session_id: str, body: bytes, command: str, buffers: Buffers | None = None
    ) -> Reply:
        """Route one ``/send`` command to the user's worker; the worker's reply verbatim.

        ``ping`` is answered from the control channel (the worker's status), so it does
        not wait behind a long command; every other command waits its turn. ``buffers``
        (``protocol.frames.Buffers``): arrays beside the JSON (``handlers/frames.py``).
        """
        s = await self.find(user, session_id)
        s.check_running()
        if command == "ping" and s.lock.locked():
            return await s.control_ping()
        timeout = self.command_timeouts.get(command, self.command_timeout)
        return await s.run(body, command, timeout=timeout, buffers=buffers)

    # --- the loops ---------------------------------------------------------------------------

    async def poll_all(self) -> None:
        """Poll loop: the sessions whose backend cannot report an exit are asked (the rest
        are watched by event, :mod:`.watch`); old endings are dropped."""
        now = time.time()
        await self.exits.poll_round()
        for s in list(self.sessions.values()):
            if s.status not in ACTIVE and self.endings.expired(s, now):
                self.endings.drop(s.id, self.sessions)

    async def sample_all(self) -> None:
        """One memory round over every running session at once (``/dash`` and tests; the
        memory loop spreads its rounds, :meth:`.memory.MemorySampler.run_round`)."""
        await self.sampler.sample_now(self._running())

    def _running(self) -> list[Session]:
        return [s for s in self.sessions.values() if s.status == "running"]

    async def cull_idle(self) -> None:
        """Cull loop: :func:`.culling.cull_pass` with :attr:`cull_policy`'s reasons."""
        await cull_pass(self.sessions.values(), self._cull_reason, self.before_stop, self.log)

    def _cull_reason(self, s: Session, now: float) -> str | None:
        return self.cull_policy.reason(s, now, watched=self.watchers[s.user.user_id] > 0)

    async def check_disk(self) -> None:
        """Disk loop: a running session over its disk quota is checkpointed and failed."""
        for s, reason in await self.limits.over_quota(self._running()):
            if s.status == "running" and s.id not in self._over_quota:
                self._over_quota.add(s.id)
                self.tasks.spawn(self._stop_over_quota(s, reason))

    async def _stop_over_quota(self, s: Session, reason: str) -> None:
        try:
            await self.endings.fail_checkpointed(s, reason, self.before_stop)
        finally:
            self._over_quota.discard(s.id)

    # --- stop and recovery ---------------------------------------------------------------------

    async def end_session(
        self,
        user: User,
        session_id: str,
        *,
        reason: str = OWNER_REASON,
        by: str = OWNER,
        wait: bool = True,
    ) -> None:
        """Stop the user's session (an admin passes ``by="admin <name>"``: it lingers);
        ``wait=False``: only until it is ``stopping``, its worker told (:meth:`Session.stop`)."""
        s = self.get_owned(user, session_id)
        if s.status in ENDED:  # dismissed: from now on not found
            self.endings.drop(s.id, self.sessions)
            return
        await s.stop("stopped", reason, by=by, wait=wait)

    async def recover(self, users: Callable[[dict[str, Any]], User]) -> None:
        """Re-adopt or fail what a previous hub left (:mod:`.recovery`; ``users``: owners)."""
        recovery = Recovery(
            make_spawner=self.make_spawner,
            services=self.services,
            registry=self.sessions,
            connect=self.connect,
            readopt=self.readopt_workers,
            ping_timeout=self.recover_ping_timeout,
            log=self.log,
        )
        await recovery.run(await self.store.list_sessions(statuses=ACTIVE), users)
