"""Per-session resource limits the hub holds itself: memory groups, disk quota, clean-up.

The session manager builds one :class:`SessionLimits` (configurable as
``c.SessionLimits``) and calls it at four points: :meth:`setup` at start-up (the
memory cgroup tree), :meth:`place` when a worker is connected, :meth:`exit_reason`
when the poll loop finds a worker gone, and :meth:`close` at shutdown; its disk loop
asks :meth:`over_quota` and checkpoints and fails what it names. The manager subscribes
:meth:`on_session_changed` to the bus: an ended session's memory group and session
directory are removed (checkpoints live elsewhere, under ``<data_dir>/checkpoints``,
and stay). A hub that shuts down leaving its workers for
re-adoption ends no session, so their directories stay for the next hub.

What each backend adds (``RLIMIT_AS``/``RLIMIT_FSIZE`` for local workers, container
limits on Docker, ``--mem`` on Slurm) is configured on the spawner; see
docs/security.md, "Resource limits".
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

from traitlets import Bool, Float, Integer, Unicode
from traitlets.config import LoggingConfigurable

from phoebe_kernel_worker.protocol.exits import describe_bytes, out_of_memory

from ..spawners.base import ByteSpecification, Spawner
from .bus import SessionChanged
from .memory import MemoryGroups
from .pool import POOL_DIR
from .session import ENDED, Session, session_dir


class SessionLimits(LoggingConfigurable):
    """The hub's own per-session limits; built and called by the session manager."""

    memory_cgroup = Bool(
        True,
        help="""Hold each local worker's mem_limit with a memory cgroup of its own when the
        hub can create one (root, or a delegated cgroup subtree): the kernel then kills
        only that worker past its limit, counting what it really uses. Where it cannot,
        or when False, local workers get RLIMIT_AS (address space) instead.""",
    ).tag(config=True)
    memory_cgroup_parent = Unicode(
        "",
        help="""The cgroup directory to build the memory tree in (cgroup v2: one whose
        subtree may enable the memory controller); empty: the hub's own cgroup.""",
    ).tag(config=True)
    session_disk_quota = ByteSpecification(
        1024**3,
        allow_none=True,
        help="""Bytes a running session's directory may hold (bytes or '512M'; default
        1 GiB); None or 0 for no quota. Checked every disk_interval: a session over it is
        checkpointed and failed with the reason.""",
    ).tag(config=True)
    session_max_files = Integer(
        10000,
        help="""Files and directories a running session's directory may hold (0 = no
        limit); enforced like session_disk_quota.""",
    ).tag(config=True)
    disk_interval = Float(
        30.0, help="Seconds between disk-usage checks of each running session's directory."
    ).tag(config=True)
    remove_session_dirs = Bool(
        True,
        help="""Remove a session's directory when the session ends (stopped, culled or
        failed). Checkpoints are kept: they live under <data_dir>/checkpoints.""",
    ).tag(config=True)

    def __init__(self, data_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: the hub's data directory (session directories and the memory tree's name)
        self.data_dir = data_dir
        #: the memory cgroup tree, once set up (None: RLIMIT_AS holds mem_limit)
        self.memory: MemoryGroups | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- start-up and shutdown ---------------------------------------------------------

    async def setup(self) -> None:
        """Build the memory cgroup tree (if configured and possible); the session manager
        calls this before any worker starts."""
        if self.memory_cgroup:
            self.memory = await asyncio.to_thread(
                MemoryGroups.setup, self.memory_cgroup_parent, self.data_dir
            )

    async def close(self) -> None:
        """Finish pending clean-ups and remove the empty memory groups (at shutdown)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.memory is not None:
            await asyncio.to_thread(self.memory.close)

    # --- memory -------------------------------------------------------------------------

    def configure(self, spawner: Spawner) -> None:
        """Tell a new spawner whether a cgroup holds its ``mem_limit`` (no RLIMIT_AS then)."""
        spawner.mem_limit_by_cgroup = self.memory is not None

    def place(self, s: Session, pid: int) -> None:
        """Put a connected local worker in its memory group (in a thread)."""
        limit = s.spawner.mem_limit
        if self.memory is not None and limit and s.spawner.mem_limit_by_cgroup:
            self._spawn(asyncio.to_thread(self.memory.place, s.id, pid, int(limit)))

    def exit_reason(self, s: Session) -> str | None:
        """Why the worker of ``s`` is gone, if its memory group says it was killed for its
        limit (the poll loop asks before the spawner's own reasons)."""
        if self.memory is not None and self.memory.oom_killed(s.id):
            return out_of_memory(s.spawner.mem_limit)
        return None

    # --- disk -------------------------------------------------------------------------------

    async def over_quota(self, running: list[Session]) -> list[tuple[Session, str]]:
        """Measure the ``running`` sessions' directories in a thread: those over
        ``session_disk_quota`` or ``session_max_files``, with the failure reason."""
        quota, max_files = self.session_disk_quota or 0, self.session_max_files
        if not quota and not max_files:
            return []
        dirs = [s.spawner.session_dir for s in running]
        usage = await asyncio.to_thread(
            lambda: [measure(d, quota, max_files) if d else (0, 0) for d in dirs]
        )
        over = []
        for s, (size, files) in zip(running, usage, strict=True):
            reason = disk_reason(size, files, quota, max_files)
            if reason is not None:
                over.append((s, reason))
        return over

    # --- clean-up ---------------------------------------------------------------------------

    def on_session_changed(self, change: SessionChanged[Session]) -> None:
        """Bus subscriber: an ended session's memory group and directory go."""
        if change.event not in ENDED:
            return
        s = change.session
        dirs: list[str] = []
        if self.remove_session_dirs:
            # its own, and the warm pool's one it started in (if it came from the pool)
            dirs = [s.spawner.session_dir, session_dir(self.data_dir, s.user.user_id, s.id)]
            dirs.append(str(Path(self.data_dir) / POOL_DIR / s.id))
        self._spawn(asyncio.to_thread(self._clean_up, s.id, dirs))

    def _clean_up(self, session_id: str, dirs: list[str]) -> None:
        if self.memory is not None:
            self.memory.release(session_id)
        for path in dict.fromkeys(d for d in dirs if d):
            try:
                shutil.rmtree(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                self.log.warning("session %s: directory %s not removed: %s", session_id, path, e)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def measure(path: str, quota: int, max_files: int) -> tuple[int, int]:
    """``(bytes, entries)`` under ``path`` (symbolic links not followed), stopping early
    once past ``quota`` bytes or ``max_files`` entries (0: no limit), so a directory
    filled on purpose costs the hub a bounded walk. Blocking: run it in a thread."""
    size = files = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    files += 1
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        else:
                            size += entry.stat(follow_symlinks=False).st_blocks * 512
                    except OSError:
                        continue
                    if (quota and size > quota) or (max_files and files > max_files):
                        return size, files
        except OSError:
            continue
    return size, files


def disk_reason(size: int, files: int, quota: int, max_files: int) -> str | None:
    """The failure reason of a session directory holding ``size`` bytes in ``files``
    entries, or None within the limits."""
    if quota and size > quota:
        return f"disk quota exceeded (limit {describe_bytes(quota)} in the session directory)"
    if max_files and files > max_files:
        return f"disk quota exceeded (limit {max_files} files in the session directory)"
    return None
