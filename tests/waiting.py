"""The one way tests wait for something: poll a condition until it holds or a deadline passes.

Tests never sleep to let something happen; they name the condition they expect and wait for
it here. Both variants raise :class:`WaitTimeout` (an ``AssertionError``, so pytest reports it
as a failed assertion) naming what was awaited, so a forgotten ``assert`` cannot turn a
timeout into a pass. They return the condition's last (truthy) value, for callers that want
what they waited for (``job = await async_wait_for(finished_job, "the job to end")``).

- :func:`wait_for` blocks: for plain (non-async) tests and fixtures, and for conditions on
  processes or files outside any event loop.
- :func:`async_wait_for` yields to the event loop between polls: for async tests and
  fixtures, where the hub under test runs on the same loop. Its condition may also return
  an awaitable (an HTTP request, ``asyncio.to_thread(blocking_check)``), which is awaited.

Used by every test tier (tests/conftest.py's leak checks, tests/unit, tests/worker,
tests/integration, tests/e2e).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: Seconds between two polls; short, since the conditions are cheap to check.
INTERVAL = 0.02


class WaitTimeout(AssertionError):
    """A condition a test waited for did not hold before its deadline."""

    def __init__(self, what: str, timeout: float, last: object) -> None:
        super().__init__(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
        self.what = what
        self.last = last


def wait_for(
    condition: Callable[[], T], what: str, *, timeout: float = 10.0, interval: float = INTERVAL
) -> T:
    """Call ``condition`` until it returns something truthy, blocking between calls.

    Returns that value; raises :class:`WaitTimeout` naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(what, timeout, value)
        time.sleep(interval)


async def async_wait_for(
    condition: Callable[[], T | Awaitable[T]],
    what: str,
    *,
    timeout: float = 10.0,
    interval: float = INTERVAL,
) -> T:
    """Call ``condition`` until it returns something truthy, yielding to the loop in between.

    If ``condition`` returns an awaitable, its result is the value checked. Returns that
    value; raises :class:`WaitTimeout` naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise WaitTimeout(what, timeout, value)
        await asyncio.sleep(interval)
