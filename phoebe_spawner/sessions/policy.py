"""The session policies, pure: culling, per-user session limits, the capacity report.

No I/O, no clock of their own (the caller passes ``now``), no hub: the
:class:`~phoebe_spawner.sessions.manager.SessionManager` builds a :class:`CullPolicy`
from its traits and asks it each cull pass; it calls :func:`session_limit` when a
session starts and :func:`port_status` for ``/dash/port-status``. They read sessions
through the small :class:`Cullable` and :class:`Held` protocols, so their tests build
plain values. :class:`CapacityPlan` is the arithmetic of what ``max_sessions`` needs
from the operating system (open files, ZMQ sockets), which :mod:`.capacity` applies.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..auth.base import User

#: prefix of a ``user_session_limits`` key that names a group (JupyterHub's, in hub mode)
GROUP_PREFIX = "group:"


class Cullable(Protocol):
    """What the cull policy reads of a session."""

    @property
    def status(self) -> str: ...
    @property
    def user(self) -> User: ...
    @property
    def created_at(self) -> float: ...
    @property
    def last_activity(self) -> float: ...
    @property
    def busy(self) -> bool: ...


class Held(Protocol):
    """What the capacity report reads of an active session."""

    @property
    def user(self) -> User: ...
    @property
    def port(self) -> int | None: ...


@dataclass(frozen=True)
class CullPolicy:
    """Which running sessions the hub stops by itself (``SessionManager`` traits).

    Idle means no command and no job queued or running (:attr:`Session.busy`) and no
    open event stream of the owner (``watched``: a page is watching).
    """

    idle_timeout: float = 0.0
    max_age: float = 0.0
    exempt_users: Collection[str] = ()
    exempt_groups: Collection[str] = ()

    def reason(self, s: Cullable, now: float, *, watched: bool = False) -> str | None:
        """Why ``s`` should be culled at ``now``, or None."""
        if s.status != "running" or s.busy:
            return None
        user = s.user
        if user.name in self.exempt_users or user.user_id in self.exempt_users:
            return None
        if any(group in self.exempt_groups for group in user.groups):
            return None
        if self.max_age and now - s.created_at > self.max_age:
            return f"older than {self.max_age:g} s"
        if self.idle_timeout and not watched and now - s.last_activity >= self.idle_timeout:
            return f"idle for {now - s.last_activity:.0f} s"
        return None


def session_limit(user: User, default: int, overrides: Mapping[str, int]) -> int:
    """The most sessions ``user`` may run at once (0 = no per-user limit).

    The user's own entry (by name, id or email) wins; else the most generous of their
    groups' entries (``"group:<name>"``; 0 counts as the most generous, unlimited); else
    ``default``.
    """
    for key in (user.name, user.user_id, user.email):
        if key and key in overrides:
            return overrides[key]
    groups = [overrides[GROUP_PREFIX + g] for g in user.groups if GROUP_PREFIX + g in overrides]
    if not groups:
        return default
    return 0 if 0 in groups else max(groups)


#: open files the hub keeps for itself whatever the sessions: the database, logs, the
#: listening sockets, ZMQ's own threads, the fork server's pipe, files opened for a moment
HUB_FDS = 64
#: ZMQ sockets kept free beyond the sessions' (a channel being replaced, a re-adopted
#: worker's check)
SPARE_SOCKETS = 32


@dataclass(frozen=True)
class CapacityPlan:
    """What ``max_sessions`` needs from the operating system, and what it allows.

    Every session (and warm-pool worker: ``pool``, which may briefly run beside a user's
    start) holds ``sockets_per_session`` ZMQ sockets and ``fds_per_session`` open files in
    the hub; every HTTP connection (``connections``: ``max_connections``, 0 when uncapped)
    one more file, and the hub :data:`HUB_FDS` for itself. ``hard_nofile`` is the
    process's hard open-files limit (None: unlimited), ``socket_limit`` the most sockets
    a ZMQ context takes, ``workers`` the most workers the backend runs at once (a root
    hub's worker uids; None: no limit of its own). Built by
    :meth:`.capacity.HubCapacity.plan`; the app refuses to start when :attr:`fits` is
    False (:func:`phoebe_spawner.preflight.check_capacity`).
    """

    max_sessions: int
    pool: int
    fds_per_session: int
    sockets_per_session: int
    connections: int
    hard_nofile: int | None
    socket_limit: int
    workers: int | None = None

    @property
    def nofile(self) -> int:
        """The open-files limit the hub needs (its soft limit is raised to at least this)."""
        sessions = self.max_sessions + self.pool
        return HUB_FDS + self.connections + self.fds_per_session * sessions

    @property
    def max_sockets(self) -> int:
        """The ZMQ context's ``MAX_SOCKETS`` the sessions need."""
        return SPARE_SOCKETS + self.sockets_per_session * (self.max_sessions + self.pool)

    def sessions_by_fds(self, nofile: int | None) -> int | None:
        """Sessions an open-files limit of ``nofile`` holds (None: no limit)."""
        if nofile is None:
            return None
        room = nofile - HUB_FDS - self.connections
        return max(0, room // self.fds_per_session - self.pool)

    def sessions_by_sockets(self, max_sockets: int) -> int:
        """Sessions a ZMQ context of ``max_sockets`` sockets holds."""
        return max(0, (max_sockets - SPARE_SOCKETS) // self.sockets_per_session - self.pool)

    @property
    def sessions_by_workers(self) -> int | None:
        """Sessions the backend's workers hold (warm-pool workers hold some; None: no
        limit)."""
        return None if self.workers is None else max(0, self.workers - self.pool)

    @property
    def allowed(self) -> int | None:
        """The most sessions the hard limits and the backend allow (None: no limit)."""
        limits = (
            self.sessions_by_sockets(self.socket_limit),
            self.sessions_by_fds(self.hard_nofile),
            self.sessions_by_workers,
        )
        return min(n for n in limits if n is not None)

    @property
    def fits(self) -> bool:
        """Whether the hard limits hold ``max_sessions``."""
        allowed = self.allowed
        return allowed is None or allowed >= self.max_sessions


def capacity_limit(
    max_sessions: int,
    port_range: Sequence[int],
    ports_per_worker: int,
    *,
    os_allows: int | None = None,
    ceiling: int | None = None,
) -> int:
    """Sessions that can run at once: ``max_sessions``, and at most what a configured
    port range holds (each worker binds ``ports_per_worker`` ports), what the hub's
    open-files and ZMQ socket limits allow (``os_allows``) and, after a start hit a
    limit nobody planned for, the sessions that were live then (``ceiling``). 0: no
    limit (``max_sessions`` 0 and nothing else bounds it)."""
    limits = [max_sessions] if max_sessions else []
    if len(port_range) == 2:
        limits.append(max(0, (port_range[1] - port_range[0]) // ports_per_worker))
    limits += [n for n in (os_allows, ceiling) if n is not None]
    return min(limits, default=0)


def port_status(
    active: Sequence[Held],
    capacity: int,
    port_range: Sequence[int],
    user_id: str | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """The compatible ``/dash/port-status`` shape, reporting session capacity.

    For an admin (``user_id=None``) the hub's: ``capacity`` and every ``active`` session.
    For a user only their own sessions and ports, against their ``limit`` (0: only the
    capacity); ``available_ports`` is also cut to the slots the hub has left, so it says
    whether a start can succeed without telling how many sessions others run.
    """
    free = max(0, capacity - len(active))
    total = capacity
    if user_id is not None:
        active = [s for s in active if s.user.user_id == user_id]
        total = min(capacity, limit) if limit else capacity
        free = min(free, max(0, total - len(active)))
    return {
        "total_ports": total,
        "reserved_ports": len(active),
        "available_ports": free,
        "reserved_port_list": sorted(s.port for s in active if s.port is not None),
        "port_range": f"{port_range[0]}-{port_range[1] - 1}" if port_range else "ephemeral",
    }
