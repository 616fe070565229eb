"""The bounded in-memory row buffer behind the store's fire-and-forget logs.

Two logs own a :class:`BatchBuffer`: the command log
(:class:`~phoebe_spawner.store.commands.CommandLog`, behind ``Store.log_command``)
and the job-event log (:class:`~phoebe_spawner.store.job_events.JobEventLog`,
behind ``Store.log_job_event``); the :class:`~phoebe_spawner.store.Store` starts
and shuts down both.  Logging must never block or fail the caller, so rows are only
appended here and a flusher task writes them in batches through a ``write``
callable the log supplies (which runs on the store's database thread).  During an
outage rows are kept, bounded, and retried.  This module knows nothing about SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from .errors import DatabaseUnavailable

__all__ = ["BatchBuffer", "WriteBatch"]

log = logging.getLogger(__name__)

Row = dict[str, Any]
#: Schedules the write of a batch on the DB thread; the future's result is the
#: number of rows that were skipped (e.g. unknown session) instead of written.
WriteBatch = Callable[[list[Row]], "asyncio.Future[int]"]


class BatchBuffer:
    """Bounded FIFO of rows to insert plus the task that flushes it.

    ``name`` (e.g. ``"command log"``) only appears in log messages and the task
    name; ``skip_reason`` says in the log why the ``write`` callable skipped rows.
    ``add`` is synchronous and O(1).  The flusher (``start``) writes every
    ``interval`` seconds, or at once when ``batch_max`` rows are waiting, in
    transactions of at most ``batch_max`` rows.  A failed write
    (:class:`DatabaseUnavailable`) puts its rows back; beyond ``10 * batch_max``
    rows the oldest are dropped and counted in :attr:`dropped`.
    """

    def __init__(
        self,
        write: WriteBatch,
        *,
        name: str,
        interval: float,
        batch_max: int,
        skip_reason: str = "rejected by the database",
    ) -> None:
        self._write = write
        self.name = name
        self.skip_reason = skip_reason
        self.interval = interval
        self.batch_max = batch_max
        self.cap = 10 * batch_max
        #: Rows lost: buffer overflow, skipped by ``write``, unwritable, or added after stop.
        self.dropped = 0
        self._rows: deque[Row] = deque()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._failures = 0
        self._drop_warned = False
        self._stopping = False
        self.closed = False

    @property
    def pending(self) -> int:
        """Rows waiting to be written."""
        return len(self._rows)

    @property
    def busy(self) -> bool:
        """Whether a flush is in progress (tests wait for it to end)."""
        return self._lock.locked()

    def add(self, row: Row) -> None:
        """Append a row (``CommandLog.log``, ``JobEventLog.log``).

        Wakes the flusher once ``batch_max`` rows are waiting; after :meth:`shutdown`
        the row is only counted as dropped.
        """
        if self.closed:
            self.dropped += 1
            return
        self._rows.append(row)
        self._trim()
        if len(self._rows) >= self.batch_max:
            self._wake_up()

    def _trim(self) -> None:
        over = len(self._rows) - self.cap
        if over <= 0:
            return
        for _ in range(over):
            self._rows.popleft()
        self.dropped += over
        if not self._drop_warned:
            self._drop_warned = True
            log.warning("%s buffer full (%d rows); dropping the oldest", self.name, self.cap)

    def _wake_up(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    def start(self) -> None:
        """Start the flusher task on the running loop (``Store.init``); idempotent."""
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
            self._task = self._loop.create_task(
                self._run(), name=f"phoebe-spawner-db-flusher ({self.name})"
            )

    async def stop(self) -> None:
        """Stop the flusher after its current flush (:meth:`shutdown`); then flush yourself."""
        self._stopping = True
        if self._task is not None:
            self._wake.set()
            await asyncio.gather(self._task, return_exceptions=True)

    async def shutdown(self, *, final_flush: bool) -> None:
        """Stop the flusher, write what is left (if ``final_flush``), then refuse rows.

        Called by ``Store.close`` for each buffer; rows that cannot be written are
        logged as lost and counted in :attr:`dropped`.
        """
        await self.stop()
        if final_flush and self._rows:
            try:
                await self.flush()
            except Exception as exc:
                log.warning("lost %d %s rows on shutdown: %s", len(self._rows), self.name, exc)
        self.discard()
        self.closed = True

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            if self._stopping:
                break
            try:
                await self.flush()
            except DatabaseUnavailable as exc:
                if self._failures % 20 == 1:  # first failure, then every 20th
                    log.warning(
                        "%s flush failed (%s); keeping %d rows, will retry",
                        self.name,
                        exc,
                        len(self._rows),
                    )
            except Exception:
                log.exception("%s flush failed unexpectedly", self.name)

    async def flush(self) -> None:
        """Write the rows buffered now, in batches (flusher, ``Store.flush_*``).

        On :class:`DatabaseUnavailable` the failed batch goes back to the front of
        the buffer and the error is raised.  Rows added meanwhile wait for next time.
        """
        async with self._lock:
            todo = len(self._rows)
            while todo > 0 and self._rows:
                n = min(todo, self.batch_max, len(self._rows))
                batch = [self._rows.popleft() for _ in range(n)]
                todo -= n
                try:
                    fut = self._write(batch)
                    skipped = await asyncio.shield(fut)
                except asyncio.CancelledError:
                    # The write still runs on the DB thread; keep the rows if it fails.
                    fut.add_done_callback(functools.partial(self._after_cancel, batch))
                    raise
                except DatabaseUnavailable:
                    self._failures += 1
                    self._requeue(batch)
                    raise
                except Exception:
                    self.dropped += n
                    log.exception("dropping %d %s rows that could not be written", n, self.name)
                    raise
                if skipped:
                    self.dropped += skipped
                    log.warning("dropped %d %s rows: %s", skipped, self.name, self.skip_reason)
                if self._failures:
                    log.info("%s writes work again", self.name)
                self._failures = 0
                self._drop_warned = False

    def _after_cancel(self, batch: list[Row], fut: asyncio.Future[int]) -> None:
        if not fut.cancelled() and isinstance(fut.exception(), DatabaseUnavailable):
            self._requeue(batch)

    def _requeue(self, batch: list[Row]) -> None:
        self._rows.extendleft(reversed(batch))
        self._trim()

    def discard(self) -> int:
        """Drop everything still buffered (:meth:`shutdown` after a failed final flush)."""
        n = len(self._rows)
        self._rows.clear()
        self.dropped += n
        return n
