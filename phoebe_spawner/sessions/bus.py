"""The session event bus: typed events of the session core, subscribed to by type.

The :class:`~phoebe_spawner.sessions.manager.SessionManager` owns one :class:`EventBus`
(``manager.bus``); sessions and the manager's loops publish on it, and everything that
follows sessions from outside subscribes to it: the job manager (iopub messages, ends),
the user and admin event logs, the metrics, the cpu and memory groups, the warm pool.
Subscribers run synchronously on the event loop, in the order they subscribed; one that
raises is logged and the others still run. Nothing here does I/O. The events are generic
in the session type (``SessionChanged[Session]``), so this module needs no session.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from phoebe_kernel_worker.protocol import Message

#: the session type the events carry (:class:`~.session.Session`)
S = TypeVar("S")
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SessionChanged(Generic[S]):
    """A session reached a point of its life: ``event`` is ``started``, ``stopping``,
    ``stopped``, ``culled`` or ``failed`` (after the status was written to the store)."""

    event: str
    session: S


@dataclass(frozen=True, slots=True)
class CommandFinished(Generic[S]):
    """A command of ``session`` finished after ``seconds``; ``error`` is None on success,
    else ``"timeout"`` or what the worker said."""

    session: S
    command: str
    seconds: float
    error: str | None


@dataclass(frozen=True, slots=True)
class SessionsSampled(Generic[S]):
    """A round of memory samples of the running ``sessions`` is done."""

    sessions: list[S]


@dataclass(frozen=True, slots=True)
class IopubMessage(Generic[S]):
    """An iopub message (progress, output) of one session's worker."""

    session: S
    message: Message


E = TypeVar("E")


class EventBus:
    """Subscribers by event type; :meth:`publish` calls those of the event's type."""

    def __init__(self) -> None:
        self._subscribers: dict[type[Any], list[Callable[[Any], None]]] = {}

    def subscribe(self, kind: type[E], subscriber: Callable[[E], None]) -> None:
        """Call ``subscriber(event)`` for every published event of type ``kind``."""
        self._subscribers.setdefault(kind, []).append(subscriber)

    def has_subscribers(self, kind: type[Any]) -> bool:
        """Whether anyone listens to ``kind`` (publishers may skip building the event)."""
        return bool(self._subscribers.get(kind))

    def publish(self, event: object) -> None:
        """Hand ``event`` to its type's subscribers, in subscription order."""
        for subscriber in self._subscribers.get(type(event), ()):
            try:
                subscriber(event)
            except Exception:
                log.exception("a subscriber of %s failed", type(event).__name__)
