"""The token buckets and the exponential back-off of ``phoebe_spawner.ratelimit``, on a
fake clock (no sleeps)."""

from __future__ import annotations

import pytest

from phoebe_spawner.ratelimit import Backoff, RateLimiter


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_bucket_allows_the_burst_then_refills_at_the_rate(clock):
    limiter = RateLimiter(per_minute=6, burst=3, clock=clock)  # one token per 10 s
    assert [limiter.hit("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.hit("a") == pytest.approx(10.0)
    assert limiter.wait_time("a") == pytest.approx(10.0)
    assert limiter.wait_time("b") == 0.0  # other keys are untouched
    clock.advance(4)
    assert limiter.wait_time("a") == pytest.approx(6.0)
    clock.advance(6)
    assert limiter.wait_time("a") == 0.0
    assert limiter.hit("a") == 0.0
    assert limiter.hit("a") == pytest.approx(10.0)
    clock.advance(3600)  # refilled, but never beyond the burst
    assert [limiter.hit("a") for _ in range(4)][-1] == pytest.approx(10.0)


def test_wait_time_consumes_nothing_and_counts_pending_events(clock):
    limiter = RateLimiter(per_minute=60, burst=2, clock=clock)
    for _ in range(5):
        assert limiter.wait_time("k") == 0.0
    assert limiter.wait_time("k", need=2) == 0.0
    assert limiter.wait_time("k", need=3) == pytest.approx(1.0)
    limiter.hit("k")
    assert limiter.wait_time("k", need=2) == pytest.approx(1.0)


def test_reset_forgets_a_key(clock):
    limiter = RateLimiter(per_minute=1, burst=1, clock=clock)
    limiter.hit("k")
    assert limiter.wait_time("k") == pytest.approx(60.0)
    limiter.reset("k")
    assert limiter.wait_time("k") == 0.0 and len(limiter) == 0


def test_disabled_limiter_never_waits(clock):
    for limiter in (RateLimiter(0, 5, clock=clock), RateLimiter(10, 0, clock=clock)):
        assert not limiter.enabled
        assert [limiter.hit("k") for _ in range(100)] == [0.0] * 100
        assert len(limiter) == 0


def test_full_buckets_are_pruned_past_max_keys(clock):
    limiter = RateLimiter(per_minute=60, burst=2, max_keys=3, clock=clock)
    for key in ("a", "b", "c"):
        limiter.hit(key)
    assert len(limiter) == 3
    clock.advance(1.5)  # a, b and c have refilled to the burst
    limiter.hit("d")  # the fourth key goes past max_keys: the full buckets go
    assert len(limiter) == 1
    assert limiter.wait_time("d") == 0.0
    # a bucket still in use is kept (and keeps its count)
    limiter.hit("d")
    limiter.hit("e")
    limiter.hit("f")
    limiter.hit("g")
    assert limiter.wait_time("d") == pytest.approx(1.0)


def test_backoff_doubles_after_the_free_failures_up_to_the_cap(clock):
    backoff = Backoff(free=2, base=10, cap=60, clock=clock)
    assert [backoff.fail("k") for _ in range(2)] == [0.0, 0.0]
    assert backoff.wait_time("k") == 0.0
    locks = []
    for _ in range(5):
        locks.append(backoff.fail("k"))
        assert backoff.wait_time("k") == locks[-1]
        clock.advance(locks[-1])  # wait out each lock before failing again
        assert backoff.wait_time("k") == 0.0
    assert locks == [10.0, 20.0, 40.0, 60.0, 60.0]
    assert backoff.wait_time("other") == 0.0


def test_backoff_reset_after_success_and_forgotten_after_quiet(clock):
    backoff = Backoff(free=1, base=10, cap=100, clock=clock)
    backoff.fail("k")
    assert backoff.fail("k") == 10.0
    backoff.reset("k")  # a successful login
    assert backoff.wait_time("k") == 0.0 and len(backoff) == 0
    assert backoff.fail("k") == 0.0  # the free failure is free again
    assert backoff.fail("k") == 10.0
    clock.advance(10 + 99)
    assert backoff.fail("k") == 20.0  # remembered until cap seconds after the lock ended
    clock.advance(20 + 100)
    assert backoff.wait_time("k") == 0.0 and len(backoff) == 0
    assert backoff.fail("k") == 0.0


def test_backoff_prunes_forgotten_then_oldest_keys(clock):
    backoff = Backoff(free=0, base=1, cap=5, max_keys=3, clock=clock)
    for key in ("a", "b", "c"):
        backoff.fail(key)
    clock.advance(10)  # a, b, c are forgotten
    backoff.fail("d")
    backoff.fail("e")
    backoff.fail("f")
    backoff.fail("g")  # four live keys: the oldest (d) goes
    assert len(backoff) == 3
    assert backoff.wait_time("d") == 0.0
    assert backoff.wait_time("g") == 1.0


def test_backoff_off_when_base_is_zero(clock):
    backoff = Backoff(free=0, base=0, cap=0, clock=clock)
    assert [backoff.fail("k") for _ in range(10)] == [0.0] * 10
    assert backoff.wait_time("k") == 0.0
