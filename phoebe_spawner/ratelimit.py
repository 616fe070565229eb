"""Rate limits per key: token buckets and exponential back-off.

:class:`RateLimiter` (token buckets) is used by the session manager (session starts
per user) and the jwt authenticator (failed logins per client address, registrations
per client address). :class:`Backoff` (exponential lock-outs after repeated failures)
is used by the jwt authenticator for failed logins per account and address.

Both live in memory, per hub process, and bound the number of keys they track by
dropping keys that carry no state any more. Both read time from an injected clock
(``clock=time.monotonic``), so their tests run on a fake clock without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]


class RateLimiter:
    """``burst`` events at once per key, refilled at ``per_minute`` events a minute."""

    def __init__(
        self,
        per_minute: float,
        burst: int,
        *,
        max_keys: int = 100_000,
        clock: Clock = time.monotonic,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated)

    @property
    def enabled(self) -> bool:
        return self.rate > 0 and self.burst > 0

    def __len__(self) -> int:
        """The number of keys tracked (full buckets are dropped when there are too many)."""
        return len(self._buckets)

    def _tokens(self, key: str, now: float) -> float:
        tokens, updated = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - updated) * self.rate)

    def wait_time(self, key: str, need: float = 1.0) -> float:
        """Seconds until ``key`` has ``need`` events left (0 if it has now); consumes
        nothing. A caller with events under way that may still be recorded passes
        ``need = 1 + pending``."""
        if not self.enabled:
            return 0.0
        tokens = self._tokens(key, self.clock())
        return 0.0 if tokens >= need else (need - tokens) / self.rate

    def hit(self, key: str) -> float:
        """Record one event for ``key`` if allowed (returns 0), else the seconds to wait."""
        if not self.enabled:
            return 0.0
        now = self.clock()
        tokens = self._tokens(key, now)
        if tokens < 1:
            return (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1, now)
        if len(self._buckets) > self.max_keys:
            self._prune(now)
        return 0.0

    def reset(self, key: str) -> None:
        """Forget ``key`` (its bucket is full again)."""
        self._buckets.pop(key, None)

    def _prune(self, now: float) -> None:
        for key in [k for k in self._buckets if self._tokens(k, now) >= self.burst]:
            del self._buckets[key]


class Backoff:
    """Exponential lock-outs per key after repeated failures.

    The first ``free`` failures of a key cost nothing; each failure after them locks
    the key for ``base`` seconds, doubling with every further failure up to ``cap``
    (``base, 2·base, 4·base, ... cap``). :meth:`reset` (a success) forgets the key; a
    key whose last lock ended ``cap`` seconds ago is forgotten too, so an old mistake
    does not follow a user for ever. ``base <= 0`` turns the back-off off.
    """

    def __init__(
        self,
        free: int,
        base: float,
        cap: float,
        *,
        max_keys: int = 100_000,
        clock: Clock = time.monotonic,
    ) -> None:
        self.free = max(0, free)
        self.base = base
        self.cap = max(cap, base)
        self.max_keys = max_keys
        self.clock = clock
        self._state: dict[str, tuple[int, float]] = {}  # key -> (failures, locked until)

    @property
    def enabled(self) -> bool:
        return self.base > 0

    def __len__(self) -> int:
        """The number of keys tracked."""
        return len(self._state)

    def _current(self, key: str, now: float) -> tuple[int, float]:
        failures, until = self._state.get(key, (0, 0.0))
        if failures and now >= until + self.cap:
            self._state.pop(key, None)
            return 0, 0.0
        return failures, until

    def wait_time(self, key: str) -> float:
        """Seconds until ``key`` may try again (0 if it may now)."""
        if not self.enabled:
            return 0.0
        now = self.clock()
        _, until = self._current(key, now)
        return max(0.0, until - now)

    def lock_for(self, failures: int) -> float:
        """The lock-out after the ``failures``-th failure in a row (0 within ``free``)."""
        beyond = failures - self.free
        if beyond <= 0:
            return 0.0
        return float(min(self.cap, self.base * 2.0 ** min(beyond - 1, 64)))

    def fail(self, key: str) -> float:
        """Record a failure of ``key``; returns the lock-out it now has (0: none)."""
        if not self.enabled:
            return 0.0
        now = self.clock()
        failures, _ = self._current(key, now)
        failures += 1
        lock = self.lock_for(failures)
        self._state.pop(key, None)  # re-insert: the dict stays ordered by last failure
        self._state[key] = (failures, now + lock)
        if len(self._state) > self.max_keys:
            self._prune(now)
        return lock

    def reset(self, key: str) -> None:
        """Forget ``key`` (after a success)."""
        self._state.pop(key, None)

    def _prune(self, now: float) -> None:
        for key in list(self._state):
            self._current(key, now)
        # still too many: drop the keys whose last failure is oldest
        excess = len(self._state) - self.max_keys
        for key in list(self._state)[: max(0, excess)]:
            del self._state[key]
