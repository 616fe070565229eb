"""Ordered event logs with contiguous ids, for Server-Sent Events streams.

An :class:`EventLog` holds the events of one job (or one user's session events) with
ids 1, 2, 3, ...; any number of readers follow it with :meth:`EventLog.since` and
:meth:`EventLog.waiter` without polling. The job manager and the session-event bus
append; the SSE handlers read. :class:`UserEvents` and :class:`AdminEvents` follow the
session manager's bus (:meth:`UserEvents.subscribe`, :meth:`AdminEvents.subscribe`).
Everything runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..sessions.bus import CommandFinished, EventBus, SessionChanged, SessionsSampled
from ..sessions.session import Session


@dataclass(frozen=True, slots=True)
class Event:
    """One event: its id in the log, its type (the SSE ``event:`` field) and its data."""

    seq: int
    type: str
    data: dict[str, Any]
    ts: float = field(default_factory=time.time)

    def sse(self) -> bytes:
        """The event in the text/event-stream wire format."""
        body = orjson.dumps({**self.data, "ts": self.ts})
        return b"id: %d\nevent: %s\ndata: %s\n\n" % (self.seq, self.type.encode(), body)


class EventLog:
    """Events with contiguous ids; the newest ``max_events`` kept in memory.

    ``closed`` means no event will follow (a finished job); a reader that has seen
    everything then ends its stream.
    """

    def __init__(self, *, max_events: int = 20000, first_seq: int = 1) -> None:
        self.max_events = max_events
        self._events: list[Event] = []
        self._next = first_seq
        self.closed = False
        self._waiters: set[asyncio.Future[None]] = set()

    @property
    def last_seq(self) -> int:
        return self._next - 1

    @property
    def first_seq(self) -> int:
        """The id of the oldest event still in memory (older ones live in the database)."""
        return self._events[0].seq if self._events else self._next

    def append(self, type: str, data: dict[str, Any]) -> Event:
        if self.closed:
            raise RuntimeError("append to a closed event log")
        event = Event(self._next, type, data)
        self._next += 1
        self._events.append(event)
        if len(self._events) > self.max_events:
            del self._events[: len(self._events) - self.max_events]
        self._wake()
        return event

    def extend(self, events: list[Event]) -> None:
        """Load stored events (replay after a restart); ids must continue the log."""
        for event in events:
            if event.seq != self._next:
                raise ValueError(f"event {event.seq} does not continue the log at {self._next}")
            self._events.append(event)
            self._next += 1

    def close(self) -> None:
        self.closed = True
        self._wake()

    def since(self, after: int) -> list[Event]:
        """Events with ids above ``after`` that are in memory, oldest first."""
        if not self._events or after >= self.last_seq:
            return []
        start = max(0, after + 1 - self._events[0].seq)
        return self._events[start:]

    def waiter(self) -> asyncio.Future[None]:
        """A future resolved at the next append or close (readers await it, then re-read)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(fut)
        fut.add_done_callback(self._waiters.discard)
        return fut

    @property
    def readers(self) -> int:
        return len(self._waiters)

    def _wake(self) -> None:
        for fut in list(self._waiters):
            if not fut.done():
                fut.set_result(None)


class UserEvents:
    """Per-user logs of session and job events (in memory, the newest ``keep`` per user).

    The app subscribes it to the session manager's bus (session started/stopped/failed/
    culled) and the job manager publishes ``job_finished``; the user event stream reads it.
    """

    def __init__(self, *, keep: int = 1000) -> None:
        self.keep = keep
        self._logs: dict[str, EventLog] = {}

    def log(self, user_id: str) -> EventLog:
        log = self._logs.get(user_id)
        if log is None:
            log = self._logs[user_id] = EventLog(max_events=self.keep)
        return log

    def publish(self, user_id: str, type: str, data: dict[str, Any]) -> Event:
        return self.log(user_id).append(type, data)

    def subscribe(self, bus: EventBus) -> None:
        """Follow the session events on ``bus``."""
        bus.subscribe(SessionChanged, self.on_session_changed)

    def on_session_changed(self, change: SessionChanged[Session]) -> None:
        """``session_<event>`` for the session's owner."""
        event, session = change.event, change.session
        self.publish(
            session.user.user_id,
            f"session_{event}",
            {"session_id": session.id, "status": session.status, "reason": session.reason},
        )


class AdminEvents:
    """One log of every user's session events, for the admin page's live table.

    Lifecycle events (``session_started``, ``session_stopping``, ``session_stopped``,
    ``session_failed``, ``session_culled``) carry the session's admin view and are
    always kept. ``session_updated`` (after each command) and ``sessions_sampled`` (after
    each round of memory samples) are only produced while an admin stream is open
    (``watchers``), so an unwatched hub pays nothing for them on the command path.
    """

    def __init__(self, *, keep: int = 2000) -> None:
        self.log = EventLog(max_events=keep)
        self.watchers = 0

    def subscribe(self, bus: EventBus) -> None:
        """Follow the session, command and memory-sample events on ``bus``."""
        bus.subscribe(SessionChanged, self.on_session_changed)
        bus.subscribe(CommandFinished, self.on_command)
        bus.subscribe(SessionsSampled, self.on_sampled)

    def on_session_changed(self, change: SessionChanged[Session]) -> None:
        """``session_<event>`` with the session's admin view."""
        self.log.append(f"session_{change.event}", change.session.to_admin(time.time()))

    def on_command(self, finished: CommandFinished[Session]) -> None:
        """``session_updated`` after a command (only while an admin stream is open)."""
        if not self.watchers:
            return
        session, seconds, error = finished.session, finished.seconds, finished.error
        self.log.append(
            "session_updated",
            {
                "session_id": session.id,
                "status": session.status,
                "last_command": finished.command,
                "last_command_ms": round(1000 * seconds, 1),
                "command_count": session.command_count,
                "last_activity": session.last_activity,
                "error": error,
                "last_error": session.last_error,
            },
        )

    def on_sampled(self, sampled: SessionsSampled[Session]) -> None:
        """``sessions_sampled`` after a round of samples (only while a stream is open)."""
        sessions = sampled.sessions
        if not self.watchers or not sessions:
            return
        now = time.time()
        samples = [
            {
                "session_id": s.id,
                "mem_used": round(s.mem_used, 2),
                "mem_pss": round(s.mem_pss, 2),
                "mem_rss": round(s.mem_rss, 2),
            }
            for s in sessions
        ]
        self.log.append("sessions_sampled", {"t": round(now, 1), "samples": samples})
