"""The session core: the manager of all sessions, and one session's worker and state.

``manager.py`` keeps the registry, limits, loops and start/stop orchestration;
``session.py`` is one session (its status, command queue, channel and ending), and
``services.py`` what it uses of the hub;
``bus.py`` the typed events others subscribe to; ``policy.py`` the pure rules (culling,
per-user limits, the capacity arithmetic); ``pool.py``, ``recovery.py``, ``memory.py``,
``cpu.py``, ``limits.py`` and ``capacity.py`` (open files and ZMQ sockets) the manager's
collaborators.
"""

from .manager import SessionManager
from .session import Session

__all__ = ["Session", "SessionManager"]
