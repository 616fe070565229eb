"""How many sessions one user may run at once: the per-user policy, pure.

``SessionManager.max_sessions_per_user`` is everyone's default; admins raise (or lower)
it for a user or a group with ``SessionManager.user_session_limits``. Called by the
session manager when a session starts and for ``/dash/port-status``; no state here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..auth.base import User
from .session import LiveSession

#: prefix of a ``user_session_limits`` key that names a group (JupyterHub's, in hub mode)
GROUP_PREFIX = "group:"


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


def port_status(
    active: Sequence[LiveSession],
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
