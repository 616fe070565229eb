"""The operating system's side of the hub's capacity: open files and ZMQ sockets.

Every live session holds three ZMQ sockets and a handful of open files in the hub (the
spawner class says how many: ``Spawner.hub_fds_per_session``). Out of the box a ZMQ
context takes 1,023 sockets (341 sessions) and a process often 1,024 files (about 140
sessions); past them a start failed with ``ZMQError: Too many open files`` and a 503.

:class:`HubCapacity` is the session manager's collaborator for this. At start-up the
app asks it for the :class:`~.policy.CapacityPlan` of ``max_sessions`` (pure arithmetic,
in :mod:`.policy`), refuses to start when the hard limits cannot hold it
(:func:`phoebe_spawner.preflight.check_capacity`), and then :meth:`HubCapacity.apply`
raises the process's soft ``RLIMIT_NOFILE`` (up to the hard limit) and the ZMQ context's
``MAX_SOCKETS`` to fit, before the fork server (which inherits the raised limit: it
holds one connection per child) and any socket start. Workers get the limit the hub
started with back (:attr:`HubCapacity.worker_nofile`, set on each spawner, applied
through its ``worker_rlimits``), so they never inherit the raised one.

What remains (other processes' files, uncapped HTTP connections, the system-wide file
table, ports) is found when a start meets it: :meth:`HubCapacity.has_room` checks, with
no await, that the files a start needs can be opened, and :func:`exhausted` tells an
``EMFILE``/``ENFILE`` anywhere in a failed start's error chain. Either way the manager
answers 429 (capacity), logs one warning, and :attr:`HubCapacity.ceiling` caps
``capacity()`` at the sessions live then, until a start finds room again or one ends.
Out of ports (``SpawnCapacityError``) is a 429 too; the port range is counted already.
"""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from phoebe_kernel_worker import protocol

from ..errors import LimitReached
from ..spawners.base import SpawnCapacityError
from .bus import EventBus, SessionChanged
from .policy import CapacityPlan, capacity_limit
from .session import ACTIVE

#: the soft open-files limit the hub raises to when max_sessions needs less (room for
#: what is not planned: HTTP connections when they are uncapped, files opened meanwhile)
GENEROUS_NOFILE = 65536
#: errnos that mean "no file descriptor left" (the process's, or the system's table)
OUT_OF_FILES = frozenset({errno.EMFILE, errno.ENFILE})
#: concurrent starts whose files a start checks it could open (more: EMFILE says so)
PROBED_STARTS = 4
#: the soft open-files limit this process started with (what workers get back)
STARTED_NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def exhausted(exc: BaseException) -> str | None:
    """What ran out, if ``exc`` (or an error it was raised from, or one it wraps) is an
    ``EMFILE``/``ENFILE`` from the OS or ZMQ; None for any other failure."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "errno", None)
        if code == errno.ENFILE:
            return "the system's open-files table is full"
        if code == errno.EMFILE:
            return "the hub's open-files or ZMQ socket limit is reached"
        current = current.__cause__ or current.__context__
    return None


def out_of_capacity(exc: BaseException) -> str | None:
    """Why a start that failed with ``exc`` ran out of capacity (files, sockets, ports:
    the manager answers 429), or None when it failed otherwise (503)."""
    if isinstance(exc, SpawnCapacityError):
        return str(exc)
    return exhausted(exc)


class HubCapacity:
    """The open-files and ZMQ socket limits of one hub, raised to fit and counted.

    Built by the :class:`~.manager.SessionManager` with its spawner class (whose
    ``hub_fds_per_session`` says what one session holds), ZMQ context and bus; the app
    calls :meth:`fit` once at start-up (through ``SessionManager.fit_capacity``), the
    manager :meth:`limit` for its capacity, :meth:`check` before a start and :meth:`hit`
    when a start ran out of files or ports.
    """

    def __init__(self, spawner_class: Any, ctx: zmq.Context[Any], bus: EventBus, log: Any):
        self.fds_per_session = int(spawner_class.hub_fds_per_session)
        self.sockets_per_session = len(protocol.CHANNELS)
        self.ctx = ctx
        self.log = log
        #: sessions the raised limits hold (None: not fitted yet)
        self.allows: int | None = None
        #: sessions live when a start last ran out (None: none did since a session ended)
        self.ceiling: int | None = None
        #: the soft open-files limit workers get (the hub's own before it was raised; 0:
        #: not raised, they inherit it unchanged), set on each spawner
        self.worker_nofile = 0
        self._warned: int | None = None
        bus.subscribe(SessionChanged, self.on_session_changed)

    # --- start-up -----------------------------------------------------------------------

    def plan(
        self, max_sessions: int, pool: int, connections: int, workers: int | None = None
    ) -> CapacityPlan:
        """What ``max_sessions`` (and a warm pool of ``pool``) needs from this process's
        hard limits and ZMQ's, with up to ``connections`` HTTP connections (0: uncapped),
        on a backend that runs at most ``workers`` workers (None: no limit of its own)."""
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        return CapacityPlan(
            max_sessions=max_sessions,
            pool=pool,
            fds_per_session=self.fds_per_session,
            sockets_per_session=self.sockets_per_session,
            connections=connections,
            hard_nofile=None if hard == resource.RLIM_INFINITY else hard,
            socket_limit=int(self.ctx.get(zmq.SOCKET_LIMIT)),
            workers=workers,
        )

    def fit(
        self,
        max_sessions: int,
        pool: int,
        connections: int,
        check: Callable[[CapacityPlan], None],
        workers: int | None = None,
    ) -> None:
        """:meth:`plan`, ``check`` it (the app's refusal to start when the hard limits
        cannot hold it), then raise the soft open-files limit and the context's
        ``MAX_SOCKETS`` to fit (before the context made its first socket and before the
        fork server starts) and note what they then allow."""
        plan = self.plan(max_sessions, pool, connections, workers)
        check(plan)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = max(plan.nofile, GENEROUS_NOFILE)
        if hard != resource.RLIM_INFINITY:
            want = min(want, hard)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        if STARTED_NOFILE != resource.RLIM_INFINITY and soft != STARTED_NOFILE:
            self.worker_nofile = STARTED_NOFILE  # raised: not for the workers
        wanted = plan.max_sockets if max_sessions else plan.socket_limit  # 0: no max_sessions
        max_sockets = min(max(int(self.ctx.get(zmq.MAX_SOCKETS)), wanted), plan.socket_limit)
        self.ctx.set(zmq.MAX_SOCKETS, max_sockets)
        by_fds = plan.sessions_by_fds(None if soft == resource.RLIM_INFINITY else soft)
        by_sockets = plan.sessions_by_sockets(max_sockets)
        self.allows = min(
            n for n in (by_sockets, by_fds, plan.sessions_by_workers) if n is not None
        )
        self.log.debug(
            "capacity: open files %s, ZMQ sockets %d: room for %d sessions",
            soft,
            max_sockets,
            self.allows,
        )

    # --- while sessions start ---------------------------------------------------------

    def limit(self, max_sessions: int, port_range: Sequence[int]) -> int:
        """The hub's capacity (0: none): ``max_sessions``, a third of ``port_range``, what
        the limits hold and the :attr:`ceiling` (:func:`.policy.capacity_limit`)."""
        return capacity_limit(
            max_sessions,
            port_range,
            self.sockets_per_session,
            os_allows=self.allows,
            ceiling=self.ceiling,
        )

    def check(self, active: Sequence[Any], max_sessions: int, port_range: Sequence[int]) -> None:
        """Refuse a start (:class:`LimitReached`, 429) when the capacity's sessions are
        already ``active``, or when the files the starts under way and this one hold in
        the hub cannot be opened now (then :meth:`hit`). Each start looks again: a
        :attr:`ceiling` whose files were freed meanwhile goes. No await."""
        self.ceiling = None
        limit = self.limit(max_sessions, port_range)
        if limit and len(active) >= limit:
            raise LimitReached(f"Capacity reached: {limit} sessions are running")
        starting = sum(1 for s in active if s.status == "pending") + 1
        if not self.has_room(starting):
            self.hit(len(active), "the hub's open-files limit is reached")
            raise LimitReached(f"Capacity reached: {len(active)} sessions are running")

    def has_room(self, starting: int) -> bool:
        """Whether the files ``starting`` session starts (at most :data:`PROBED_STARTS`)
        hold in the hub can be opened now: opens that many and closes them (one ``open``,
        then ``dup``: a few microseconds each)."""
        fds: list[int] = []
        try:
            fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            for _ in range(min(starting, PROBED_STARTS) * self.fds_per_session - 1):
                fds.append(os.dup(fds[0]))
        except OSError as e:
            if e.errno in OUT_OF_FILES:
                return False
            raise
        finally:
            for fd in fds:
                os.close(fd)
        return True

    def start_failed(self, exc: BaseException, live: int) -> str | None:
        """Why a start that failed with ``exc`` ran out of capacity, or None (another
        failure); out of files, it is also a :meth:`hit` with ``live`` other sessions."""
        why = out_of_capacity(exc)
        if why is not None and not isinstance(exc, SpawnCapacityError):
            self.hit(live, why)  # out of ports: the port range is counted already
        return why

    def hit(self, live: int, why: str) -> None:
        """A start ran out of files (``why``) with ``live`` sessions: cap the reported
        capacity at them (at least one) until a start finds room or a session ends; one
        warning per cap."""
        self.ceiling = max(1, live)
        if self._warned != self.ceiling:
            self._warned = self.ceiling
            self.log.warning(
                "capacity: %s with %d sessions live; starts answer 429 until one ends",
                why,
                live,
            )

    def on_session_changed(self, change: SessionChanged[Any]) -> None:
        """Bus subscriber: a session that ended freed its files and sockets: try again."""
        if change.session.status not in ACTIVE:
            self.ceiling = None
