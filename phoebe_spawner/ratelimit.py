"""Token-bucket rate limits per key (user id, client address, login name).

Used by the session manager (session starts per user) and the jwt authenticator
(failed logins per account and per address). In memory, per hub process; the number
of tracked keys is bounded by dropping buckets that are full again.
"""

from __future__ import annotations

import time


class RateLimiter:
    """``burst`` events at once per key, refilled at ``per_minute`` events a minute."""

    def __init__(self, per_minute: float, burst: int, *, max_keys: int = 100_000) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated)

    @property
    def enabled(self) -> bool:
        return self.rate > 0 and self.burst > 0

    def _tokens(self, key: str, now: float) -> float:
        tokens, updated = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - updated) * self.rate)

    def wait_time(self, key: str) -> float:
        """Seconds until ``key`` may act again (0 if it may now); consumes nothing."""
        if not self.enabled:
            return 0.0
        tokens = self._tokens(key, time.monotonic())
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def hit(self, key: str) -> float:
        """Record one event for ``key`` if allowed (returns 0), else the seconds to wait."""
        if not self.enabled:
            return 0.0
        now = time.monotonic()
        tokens = self._tokens(key, now)
        if tokens < 1:
            return (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1, now)
        if len(self._buckets) > self.max_keys:
            self._prune(now)
        return 0.0

    def reset(self, key: str) -> None:
        self._buckets.pop(key, None)

    def _prune(self, now: float) -> None:
        for key in [k for k in self._buckets if self._tokens(k, now) >= self.burst]:
            del self._buckets[key]
