"""Prometheus metrics of one hub: sessions by status, their memory, spawn and command
latency, failures.

The app builds one :class:`HubMetrics` per hub (its own registry, so several hubs in
one process — the tests — do not share counters) and subscribes it to the session
manager's bus; ``GET /metrics`` renders :meth:`HubMetrics.render`. Nothing here
does I/O: its subscribers only bump counters on the event loop.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from phoebe_kernel_worker.protocol import COMMANDS

from .sessions.bus import CommandFinished, SessionChanged
from .sessions.session import Session

if TYPE_CHECKING:
    from .sessions.manager import SessionManager

#: The content type of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATUSES = ("pending", "running", "stopping", "failed")
MIB = 1024 * 1024
SPAWN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300)
COMMAND_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600
)  # fmt: skip


class _SessionsCollector(Collector):
    """``phoebe_spawner_sessions{status}`` and the other gauges, counted from the live
    sessions at scrape time (memory: their last samples, see ``sessions/memory.py``)."""

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        counts = Tally(s.status for s in self.manager.sessions.values())
        gauge = GaugeMetricFamily(
            "phoebe_spawner_sessions", "Sessions the hub holds, by status", labels=["status"]
        )
        for status in STATUSES:
            gauge.add_metric([status], counts.get(status, 0))
        yield gauge
        users = GaugeMetricFamily(
            "phoebe_spawner_active_users", "Users with at least one pending or running session"
        )
        users.add_metric([], len({s.user.user_id for s in self.manager.active()}))
        yield users
        pool = self.manager.pool
        ready = GaugeMetricFamily(
            "phoebe_spawner_warm_pool_workers", "Warm-pool workers by state", labels=["state"]
        )
        ready.add_metric(["ready"], len(pool.ready))
        ready.add_metric(["starting"], pool.starting)
        yield ready
        running = [s for s in self.manager.sessions.values() if s.status == "running"]
        memory = GaugeMetricFamily(
            "phoebe_spawner_sessions_memory_bytes",
            "Memory of the running sessions' workers at their last sample, summed, by kind: "
            "uss (private: what ending them frees), pss (private plus a share of what they "
            "share: their cost to the machine), rss (shared pages counted in every worker)",
            labels=["kind"],
        )
        for kind, attr in (("uss", "mem_used"), ("pss", "mem_pss"), ("rss", "mem_rss")):
            memory.add_metric([kind], sum(getattr(s, attr) for s in running) * MIB)
        yield memory


class HubMetrics:
    """The hub's metrics; :meth:`connect` subscribes them to a session manager."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.spawn_duration = Histogram(
            "phoebe_spawner_spawn_duration_seconds",
            "Time from a start request to a worker answering, by outcome",
            ["outcome"],
            buckets=SPAWN_BUCKETS,
            registry=r,
        )
        self.command_duration = Histogram(
            "phoebe_spawner_command_duration_seconds",
            "Time commands take through the hub (queueing included), by command",
            ["command"],
            buckets=COMMAND_BUCKETS,
            registry=r,
        )
        self.command_errors = Counter(
            "phoebe_spawner_command_errors",
            "Commands that did not succeed, by command and kind (timeout, error)",
            ["command", "kind"],
            registry=r,
        )
        self.failures = Counter(
            "phoebe_spawner_session_failures",
            "Sessions that failed, by stage (start: never ran; run: died or was stopped)",
            ["stage"],
            registry=r,
        )
        self.culls = Counter(
            "phoebe_spawner_culls", "Sessions the hub culled (idle or too old)", registry=r
        )
        self.ended = Counter(
            "phoebe_spawner_sessions_ended",
            "Sessions that ended, by final status",
            ["status"],
            registry=r,
        )

    def connect(self, manager: SessionManager) -> None:
        """Count what ``manager`` does from now on."""
        self.registry.register(_SessionsCollector(manager))
        manager.bus.subscribe(SessionChanged, self.on_session_changed)
        manager.bus.subscribe(CommandFinished, self.on_command)

    def on_session_changed(self, change: SessionChanged[Session]) -> None:
        """Count starts, failures and ends."""
        event, s = change.event, change.session
        if event == "started":
            if s.readopted:
                return
            self.spawn_duration.labels("success").observe(time.time() - s.created_at)
        elif event == "failed":
            if s.started_at is None:
                self.spawn_duration.labels("failure").observe(time.time() - s.created_at)
                self.failures.labels("start").inc()
            else:
                self.failures.labels("run").inc()
            self.ended.labels("failed").inc()
        elif event in ("stopped", "culled"):
            self.ended.labels(event).inc()
            if event == "culled":
                self.culls.inc()

    def on_command(self, finished: CommandFinished[Session]) -> None:
        """Count a finished command's duration and error."""
        command, seconds, error = finished.command, finished.seconds, finished.error
        # the worker's registered names get their own label value; anything else is "other",
        # so a client cannot grow the label set without bound
        name = command if command in COMMANDS else "other"
        self.command_duration.labels(name).observe(seconds)
        if error is not None:
            self.command_errors.labels(name, "timeout" if error == "timeout" else "error").inc()

    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)
