"""The memory loop's rounds (phoebe_spawner.sessions.memory): each running session is
sampled once per interval, in batches spread across it, recorded in one store write.

The clock and sleep are injected (a fake clock that sleeping advances), so nothing here
waits; the sessions are stand-ins with what the sampler reads and calls.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from phoebe_spawner.sessions.bus import EventBus, SessionsSampled
from phoebe_spawner.sessions.memory import MemorySampler, plan_round
from phoebe_spawner.store import DatabaseUnavailable


class FakeClock:
    """Monotonic time that only moves when the sampler sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class FakeSession:
    id: str
    clock: FakeClock
    mem_used: float = 10.0
    mem_limit: int | None = None
    status: str = "running"
    sampled_at: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    mem_history: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=120))

    @property
    def spawner(self) -> Any:
        return SimpleNamespace(mem_limit=self.mem_limit)

    async def sample(self) -> float:
        self.sampled_at.append(self.clock.now)
        return self.mem_used

    async def fail(self, reason: str) -> None:
        self.failed.append(reason)
        self.status = "failed"


class FakeStore:
    def __init__(self, *, down: bool = False) -> None:
        self.writes: list[list[tuple[str, float, float]]] = []
        self.down = down

    async def record_metrics(self, rows: list[tuple[str, float, float]]) -> int:
        if self.down:
            raise DatabaseUnavailable("down")
        self.writes.append(list(rows))
        return 0


def sampler(store: FakeStore, bus: EventBus, clock: FakeClock) -> MemorySampler:
    return MemorySampler(store, bus, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]


@pytest.mark.parametrize(("n", "interval"), [(1, 30.0), (7, 30.0), (300, 30.0), (1000, 30.0)])
def test_a_round_covers_every_session_once_spread_over_the_interval(
    n: int, interval: float
) -> None:
    plan = plan_round(n, interval)
    covered = [i for _, part in plan for i in range(n)[part]]
    assert covered == list(range(n))
    offsets = [offset for offset, _ in plan]
    assert offsets[-1] == pytest.approx(interval)
    gaps = [b - a for a, b in zip([0.0, *offsets], offsets, strict=False)]
    assert min(gaps) >= 0.1 - 1e-9 and max(gaps) - min(gaps) < 1e-9  # evenly, >= 0.1 s apart
    sizes = [len(range(n)[part]) for _, part in plan]
    assert max(sizes) == -(-n // len(plan))  # batches as small as the gap allows


def test_a_short_interval_makes_fewer_larger_batches() -> None:
    plan = plan_round(100, 1.0)
    assert len(plan) == 10 and [len(range(100)[p]) for _, p in plan] == [10] * 10
    assert plan_round(0, 30.0) == []


async def test_each_session_is_sampled_once_per_round_at_its_batch_time() -> None:
    clock, store, bus = FakeClock(), FakeStore(), EventBus()
    rounds: list[list[str]] = []
    bus.subscribe(SessionsSampled, lambda e: rounds.append([s.id for s in e.sessions]))
    sessions = [FakeSession(f"s{i}", clock) for i in range(600)]
    mem = sampler(store, bus, clock)
    start = clock.now
    for _ in range(2):
        await mem.run_round(lambda: list(sessions), 30.0)
    assert clock.now == pytest.approx(start + 60.0)  # a round lasts its interval
    for s in sessions:
        assert len(s.sampled_at) == 2 and s.sampled_at[1] - s.sampled_at[0] == pytest.approx(30)
    times = sorted({t for s in sessions for t in s.sampled_at if t <= start + 30.0})
    assert len(times) == 300 and times[0] == pytest.approx(start + 0.1)  # 300 batches of 2
    assert rounds == [[s.id for s in sessions]] * 2
    assert [len(w) for w in store.writes] == [600, 600]  # one write per round
    assert all(len(s.mem_history) == 2 for s in sessions)


async def test_a_session_that_ended_is_skipped_and_one_over_its_limit_fails_at_once() -> None:
    clock, store, bus = FakeClock(), FakeStore(), EventBus()
    ended, hungry, fine = (FakeSession(f"s{i}", clock) for i in range(3))
    ended.status = "stopped"
    hungry.mem_used, hungry.mem_limit = 300.0, 200 * 1024 * 1024
    await sampler(store, bus, clock).run_round(lambda: [ended, hungry, fine], 3.0)
    assert ended.sampled_at == [] and len(fine.sampled_at) == 1
    assert hungry.failed == [
        "out of memory (limit 200 MiB): the worker used 300 MiB of private memory"
    ]
    assert hungry.sampled_at[0] < fine.sampled_at[0]  # failed in its batch, not at the end
    assert [[sid for sid, _, _ in w] for w in store.writes] == [["s1", "s2"]]


async def test_an_empty_round_waits_its_interval_and_a_store_outage_loses_only_the_rows() -> None:
    clock, bus = FakeClock(), EventBus()
    mem = sampler(FakeStore(down=True), bus, clock)
    await mem.run_round(list, 30.0)
    assert clock.sleeps == [30.0]
    s = FakeSession("s0", clock)
    await mem.sample_now([s])  # the outage is not an error of the round
    assert len(s.mem_history) == 1 and clock.sleeps == [30.0]
