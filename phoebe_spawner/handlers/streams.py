"""Server-Sent Events: the base handler and the per-user event stream.

A stream writes the events of an :class:`~phoebe_spawner.jobs.events.EventLog` as they
come, with ``id:`` lines so a client that reconnects with ``Last-Event-ID`` resumes
without a gap or a duplicate, and a comment line every ``keepalive`` seconds so proxies
keep the connection open. When the client goes away the handler wakes at once and
ends, leaving no task or socket behind.

Browsers cannot put an ``Authorization`` header on an ``EventSource``; streams are
GET requests, which also accept the session cookie set at login (see
``Authenticator.bearer_token``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tornado.iostream import StreamClosedError

from ..jobs.events import Event, EventLog
from .base import ApiError, BaseHandler

Backfill = Callable[[int, int], Awaitable[list[Event]]]
TRUE = ("1", "true", "yes")


class EventStreamHandler(BaseHandler):
    """Base of SSE handlers: subclasses find the log and call :meth:`stream`."""

    _gone = False
    _waiter: asyncio.Future[None] | None = None

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("X-Accel-Buffering", "no")

    def on_connection_close(self) -> None:
        self._gone = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def start_after(self, default: int) -> int:
        """Where to resume: after ``Last-Event-ID`` (header or query), or from the beginning."""
        if self.get_query_argument("from_beginning", "").lower() in TRUE:
            return 0
        raw = self.request.headers.get("Last-Event-ID") or self.get_query_argument(
            "last_event_id", None
        )
        if raw is None:
            return default
        try:
            after = int(raw)
        except ValueError:
            raise ApiError(400, "Last-Event-ID must be an integer event id") from None
        return max(0, after)

    async def stream(self, log: EventLog, after: int, backfill: Backfill | None = None) -> None:
        """Write the log's events after ``after`` until it closes or the client leaves."""
        keepalive = self.hub.sse_keepalive
        try:
            self.write(b"retry: 2000\n\n")
            await self.flush()
            if backfill is not None and after < log.first_seq - 1:
                for event in await backfill(after, log.first_seq - 1):
                    self.write(event.sse())
                    after = event.seq
                await self.flush()
            while not self._gone:
                batch = log.since(after)
                if batch:
                    self.write(b"".join(event.sse() for event in batch))
                    after = batch[-1].seq
                    await self.flush()
                if log.closed and after >= log.last_seq:
                    break
                self._waiter = log.waiter()
                try:
                    await asyncio.wait_for(self._waiter, keepalive)
                except TimeoutError:
                    self.write(b": keepalive\n\n")
                    await self.flush()
                finally:
                    self._waiter = None
        except StreamClosedError:
            return
        if not self._gone:
            self.finish()


class UserEventsHandler(EventStreamHandler):
    """``GET /api/v1/events``: the caller's session and job events, live.

    Without ``Last-Event-ID`` (or ``from_beginning``) only new events are sent. While a
    user has one open (a page is watching), their sessions are not culled as idle.
    """

    async def get(self) -> None:
        log = self.hub.user_events.log(self.user.user_id)
        watchers = self.manager.watchers
        watchers[self.user.user_id] += 1  # a watched user's sessions are not idle
        try:
            await self.stream(log, self.start_after(default=log.last_seq))
        finally:
            watchers[self.user.user_id] -= 1
            if not watchers[self.user.user_id]:
                del watchers[self.user.user_id]
