"""What every session uses of the hub, in one object the manager builds once.

A :class:`~.session.Session` gets one :class:`SessionServices` (the store, the bus, the
log, the tracked background tasks, the cpu isolation tree), never the manager itself;
:class:`Tasks` keeps the manager's and its sessions' background work (a command's
recovery after a timeout, a failure, a stop that end-session does not wait for)
referenced until done, and hub shutdown waits for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from ..store import Store
from .bus import EventBus


class CpuClassing(Protocol):
    """The cpu isolation tree as a session uses it (:class:`.cpu.CpuClasses`)."""

    def background(self, session_id: str, on: bool) -> None: ...


class Tasks:
    """Background tasks kept referenced until done (the manager's and its sessions')."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background; it finishes even if its awaiter is cancelled."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait(self) -> None:
        """Wait for every task still running (at shutdown)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass(eq=False)
class SessionServices:
    """What every session uses of the hub; built once by the manager."""

    store: Store
    bus: EventBus
    log: logging.Logger | logging.LoggerAdapter[Any]
    tasks: Tasks
    #: seconds a worker has to leave an interrupted command before it is declared hung
    interrupt_grace: float
    #: commands run in the background cpu class (with cpu isolation)
    background_commands: Collection[str] = ()
    #: the cpu isolation tree, once set up (None: off)
    cpu: CpuClassing | None = None
