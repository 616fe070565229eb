"""Death detection: a running session whose worker is gone is failed, at once where the
backend can tell, within ``poll_interval`` where it must be asked.

The session manager owns one :class:`ExitWatch` (``manager.exits``), feeds it the bus's
:class:`~.bus.SessionChanged` events (from :meth:`SessionManager.start_background_tasks
<phoebe_spawner.sessions.manager.SessionManager.start_background_tasks>`) and runs
:meth:`ExitWatch.poll_round` from its poll loop.

When a session starts (or is re-adopted) its spawner is asked to
:meth:`~phoebe_spawner.spawners.base.Spawner.watch_exit`: the local backends see an
exit as an event (a child's ``wait``, a pidfd on the event loop, the fork server's exit
report), so their sessions cost nothing between events. A backend that cannot (Docker,
Slurm, a kernel without pidfds) answers None and its session joins the polled set,
which :meth:`ExitWatch.poll_round` visits with at most :data:`POLL_CONCURRENCY`
coroutines: no task per session per interval. Either way the session fails with the
reason the poll loop always gave: the memory group's out-of-memory kill, else the
spawner's own words, else a description of the exit status.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from .bus import SessionChanged
from .limits import SessionLimits
from .services import Tasks
from .session import Session, describe_exit

#: sessions polled at once by one round (backends whose poll is a request: Docker, Slurm)
POLL_CONCURRENCY = 8


class ExitWatch:
    """Which running sessions are watched by event and which are polled; fails those
    whose worker exited. Built by the session manager; see the module docstring."""

    def __init__(self, limits: SessionLimits, tasks: Tasks, poll_timeout: float, log: Any):
        self._limits = limits
        self._tasks = tasks
        #: seconds one poll may take before it counts as "no news" (logged)
        self.poll_timeout = poll_timeout
        self._log = log
        #: cancel functions of the event watches, by session id
        self._watches: dict[str, Callable[[], None]] = {}
        #: sessions whose backend cannot tell: polled by :meth:`poll_round`
        self._polled: dict[str, Session] = {}

    @property
    def watched(self) -> int:
        """Sessions watched by event."""
        return len(self._watches)

    @property
    def polled(self) -> list[Session]:
        """Sessions the poll loop asks."""
        return list(self._polled.values())

    def on_session_changed(self, change: SessionChanged[Session]) -> None:
        """Bus subscriber: watch a session that started, forget one that ends."""
        if change.event == "started":
            self.watch(change.session)
        else:
            self.forget(change.session)

    def watch(self, s: Session) -> None:
        """Watch the running session ``s`` by event, or poll it if its backend cannot."""
        if s.id in self._watches or s.id in self._polled:
            return
        try:
            cancel = s.spawner.watch_exit(functools.partial(self._exited, s))
        except Exception:
            self._log.exception("watching the worker of session %s failed; polling it", s.id)
            cancel = None
        if cancel is None:
            self._polled[s.id] = s
        else:
            self._watches[s.id] = cancel

    def forget(self, s: Session) -> None:
        """Stop watching ``s`` (it is stopping, or ended)."""
        cancel = self._watches.pop(s.id, None)
        if cancel is not None:
            cancel()
        self._polled.pop(s.id, None)

    def close(self) -> None:
        """Stop every watch (hub shutdown; workers left running keep running)."""
        for cancel in self._watches.values():
            cancel()
        self._watches.clear()
        self._polled.clear()

    def _exited(self, s: Session, status: int | None) -> None:
        """A spawner's exit callback: fail the session, or poll it if the backend lost
        sight of the worker (``status`` None)."""
        self._watches.pop(s.id, None)
        if s.status != "running":
            return
        if status is None:
            self._polled[s.id] = s
            return
        self._tasks.spawn(self.fail(s, status))

    async def fail(self, s: Session, status: int) -> None:
        """Fail ``s``, whose worker exited with ``status``, with the reason for it."""
        if s.status == "running":
            reason = self._limits.exit_reason(s) or s.spawner.exit_reason(status)
            await s.fail(reason or describe_exit(status))

    async def poll_round(self) -> None:
        """Poll the sessions whose backend cannot tell, :data:`POLL_CONCURRENCY` at a time
        (in this coroutine when only one needs it); fail those whose worker is gone."""
        sessions = [s for s in self._polled.values() if s.status == "running"]
        if not sessions:
            return
        todo = iter(sessions)

        async def worker() -> None:
            for s in todo:
                status = await self._poll(s)
                if status is not None:
                    await self.fail(s, status)

        n = min(POLL_CONCURRENCY, len(sessions))
        if n == 1:
            await worker()
        else:
            await asyncio.gather(*(worker() for _ in range(n)))

    async def _poll(self, s: Session) -> int | None:
        try:
            async with asyncio.timeout(self.poll_timeout):
                return await s.spawner.poll()
        except TimeoutError:
            self._log.warning("poll of session %s timed out", s.id)
            return None
        except Exception:
            self._log.exception("poll of session %s failed", s.id)
            return None
