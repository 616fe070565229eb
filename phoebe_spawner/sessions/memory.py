"""Memory: each worker's sampled use, and per-session memory cgroups holding ``mem_limit``.

Sampling: the session manager's memory loop (:class:`MemorySampler`) samples every
running session once per ``memory_interval``, spread across it in small batches
(:func:`plan_round`) so that workers are not all asked at once, and records a round's
samples in one store write (``/dash/session-memory`` asks one :meth:`Session.sample`).
A sample is the worker's private memory, the USS of its process tree (``Session.mem_used``), with
its PSS and RSS beside it (``mem_pss``, ``mem_rss``: the admin API and ``/metrics``).
USS is what is shown and kept: in the session (``mem_history``, for the admin page's
plots), in the store (``session_metrics``) and announced on the bus. RSS misleads for
forked workers: each maps the fork server's template (~140 MiB) and holds a few MiB of
its own.

A session whose USS is over its spawner's ``mem_limit`` is failed. USS is what the
kernel's limits charge too: a memory cgroup charges a page to the group of the process
that first touched it, so the template's pages shared by every forked worker stay with
the fork server and a worker's group holds what it allocated itself (the container on
Docker and Slurm's job cgroup likewise). Checking RSS would fail forked sessions under a
small limit for pages they share and the kernel never charged them.

Memory groups: ``RLIMIT_AS`` counts address space, not memory: a worker's threads and
libraries reserve far more than they touch, and a C++ allocation past it ends the worker
with ``std::bad_alloc``. A memory cgroup counts what the worker really uses (its whole
process tree, page cache included) and, past the limit, the kernel kills that worker
and no other process on the machine. Where the hub can create cgroups (root, or a
delegated subtree), :class:`~phoebe_spawner.sessions.limits.SessionLimits` keeps a
:class:`MemoryGroups` tree in the ``memory`` hierarchy (version 1 or 2)::

    <parent>/phoebe-spawner-<id>/s-<sid>    one per session: memory.max / limit_in_bytes

The tree has the same name as the cpu isolation tree (:mod:`.cpu`), so on cgroup v2,
where both controllers share one hierarchy, a worker sits in one group that carries
both. Every method of it is a few small writes to the cgroup file system and blocks:
the callers run them in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from phoebe_kernel_worker.protocol.exits import out_of_memory

from ..store import DatabaseUnavailable, Store
from .bus import EventBus, SessionsSampled
from .cpu import enable_controller, hierarchy, remove_group, remove_tree, tree_name
from .session import Session

log = logging.getLogger(__name__)


#: at least this many seconds between two batches of a spread round (:func:`plan_round`)
BATCH_GAP = 0.1


def plan_round(n: int, interval: float, gap: float = BATCH_GAP) -> list[tuple[float, slice]]:
    """The batches of one memory round of ``n`` sessions spread over ``interval`` seconds:
    ``(offset from the round's start, slice of the sessions)`` each, evenly spaced and at
    least ``gap`` apart, every session in exactly one, the last batch at ``interval`` (so
    a lone session is sampled ``interval`` after the round began, as before spreading).
    Called by :meth:`MemorySampler.run_round`."""
    if n <= 0:
        return []
    batches = max(1, min(n, int(interval / gap) if gap > 0 else n))
    size = math.ceil(n / batches)
    batches = math.ceil(n / size)
    step = interval / batches
    return [((k + 1) * step, slice(k * size, min(n, (k + 1) * size))) for k in range(batches)]


class MemorySampler:
    """The memory loop's rounds: built by the session manager (``manager.sampler``), which
    runs :meth:`run_forever` as its memory loop and :meth:`sample_now` for
    ``SessionManager.sample_all``. ``clock`` and ``sleep`` are injectable for tests."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        *,
        log: Any = log,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.bus = bus
        self.log = log
        self.clock = clock
        self.sleep = sleep

    async def run_forever(self, running: Callable[[], list[Session]], interval: float) -> None:
        """The memory loop: :meth:`run_round` after :meth:`run_round`; a failed round is
        logged and the next one starts after ``interval``."""
        while True:
            try:
                await self.run_round(running, interval)
            except Exception:
                self.log.exception("a memory sampling round failed; it will run again")
                await self.sleep(interval)

    async def run_round(self, running: Callable[[], list[Session]], interval: float) -> None:
        """One round: the sessions ``running()`` returns now, sampled in the batches of
        :func:`plan_round` across ``interval`` seconds (one control request per session,
        never a burst of all), then recorded in one store write and announced. A session
        that left ``running`` before its batch is skipped; one started meanwhile joins
        the next round. Returns at the end of the interval."""
        start = self.clock()
        sessions = running()
        if not sessions:
            await self.sleep(interval)
            return
        rows: list[tuple[str, float, float]] = []
        sampled: list[Session] = []
        for offset, part in plan_round(len(sessions), interval):
            delay = start + offset - self.clock()
            if delay > 0:
                await self.sleep(delay)
            batch = [s for s in sessions[part] if s.status == "running"]
            await self._sample(batch, rows)
            sampled += batch
        await self._finish(sampled, rows)

    async def sample_now(self, sessions: list[Session]) -> None:
        """Sample ``sessions`` at once, record and announce them (one round, unspread)."""
        rows: list[tuple[str, float, float]] = []
        await self._sample(sessions, rows)
        await self._finish(sessions, rows)

    async def _sample(self, batch: list[Session], rows: list[tuple[str, float, float]]) -> None:
        """Ask each worker of ``batch`` its memory; keep it in ``mem_history`` and ``rows``
        and fail a session over its ``mem_limit`` (on USS) at once."""
        if len(batch) == 1:
            await batch[0].sample()
        elif batch:
            await asyncio.gather(*(s.sample() for s in batch))
        now = time.time()
        for s in batch:
            s.mem_history.append((now, s.mem_used))
            rows.append((s.id, now, s.mem_used))
        for s in batch:
            limit = s.spawner.mem_limit
            if limit and s.mem_used * 1024 * 1024 > limit and s.status == "running":
                await s.fail(
                    f"{out_of_memory(limit)}: the worker used {s.mem_used:.0f} MiB of "
                    "private memory"
                )

    async def _finish(self, sampled: list[Session], rows: list[tuple[str, float, float]]) -> None:
        """Announce the round (:class:`~.bus.SessionsSampled`) and record its samples in
        one store write (skipped while the database is unavailable)."""
        self.bus.publish(SessionsSampled(sampled))
        if rows:
            with contextlib.suppress(DatabaseUnavailable):
                await self.store.record_metrics(rows)


class MemoryGroups:
    """The hub's memory cgroup tree: built by :meth:`setup`, a group per session added by
    :meth:`place`, read by :meth:`oom_killed` and removed by :meth:`release`."""

    def __init__(self, root: Path, version: int) -> None:
        self.root = root
        self.version = version

    @classmethod
    def setup(cls, parent: str, key: str) -> MemoryGroups | None:
        """Create the tree under ``parent`` (empty: this process's own memory cgroup);
        ``key`` (the hub's data directory) names it. None, with a log line saying why,
        when this hub cannot create memory cgroups."""
        where = hierarchy("memory")
        if where is None:
            log.info("memory limits by RLIMIT_AS: no cgroup 'memory' controller")
            return None
        mount, own, version = where
        base = Path(parent) if parent else mount / own.lstrip("/")
        tree = cls(base / tree_name(key), version)
        try:
            if version == 2:
                enable_controller(base, "memory")
            tree.root.mkdir(exist_ok=True)
            if version == 2:
                enable_controller(tree.root, "memory")
            probe = tree.root / "probe"
            probe.mkdir(exist_ok=True)
            try:
                if not (probe / tree.limit_file).exists():
                    raise OSError(f"no {tree.limit_file} in a new group")
            finally:
                probe.rmdir()
        except OSError as e:
            log.info("memory limits by RLIMIT_AS: cannot use the cgroup tree %s: %s", tree.root, e)
            with contextlib.suppress(OSError):
                tree.root.rmdir()
            return None
        log.info("memory limits: workers in per-session memory cgroups under %s", tree.root)
        return tree

    @property
    def limit_file(self) -> str:
        return "memory.max" if self.version == 2 else "memory.limit_in_bytes"

    def _group(self, session_id: str) -> Path:
        return self.root / f"s-{session_id}"

    def place(self, session_id: str, pid: int, limit: int) -> bool:
        """Give the session a group limited to ``limit`` bytes (no swap beyond it) and move
        the worker ``pid`` into it; False (logged) if that failed."""
        group = self._group(session_id)
        try:
            group.mkdir(exist_ok=True)
            (group / self.limit_file).write_text(str(limit))
            swap = "memory.swap.max" if self.version == 2 else "memory.memsw.limit_in_bytes"
            with contextlib.suppress(OSError):  # no swap accounting on this kernel
                (group / swap).write_text("0" if self.version == 2 else str(limit))
            (group / "cgroup.procs").write_text(str(pid))
        except OSError as e:  # e.g. the worker already exited (ESRCH)
            log.warning("session %s: worker %s not placed in %s: %s", session_id, pid, group, e)
            return False
        return True

    def oom_killed(self, session_id: str) -> bool:
        """Whether the kernel killed a process of the session's group for its limit."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            text = (self._group(session_id) / name).read_text()
        except OSError:
            return False
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value) > 0
        return False

    def release(self, session_id: str) -> None:
        """Remove the group of an ended session (it is empty once the worker is gone)."""
        remove_group(self._group(session_id), session_id)

    def close(self) -> None:
        """Remove every empty group, then the tree (groups of workers left running for
        re-adoption stay, for the next hub)."""
        remove_tree(self.root, "s-")
