"""The hub's half of the wall around local workers (see ``docs/security.md``).

* :func:`harden_hub` (called by the app before it opens the database): the hub process
  becomes non-dumpable (``PR_SET_DUMPABLE 0``: no process of its user may read its
  ``/proc/<pid>/environ`` or ``mem``, or ptrace it), creates everything with umask 077,
  and tightens an existing data directory (0700), database and secret file (0600).
* :class:`UidPool`: the dedicated uids workers run as when the hub runs as root, one
  per live worker, never shared, their left-over processes killed on release (in
  batches, on one thread: :data:`RELEASES`).
* :func:`read_paths`: what a worker may read (system and Python paths), never the data
  directory; the policy itself is built by
  :meth:`~phoebe_spawner.spawners.local.LocalProcessSpawner.wall_policy` and enforced by
  the worker (:mod:`phoebe_kernel_worker.wall`).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib.util
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

PR_SET_DUMPABLE = 4

#: system directories every worker may read (those that exist)
SYSTEM_READ_PATHS = ["/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc", "/proc", "/sys"]


def harden_hub(data_dir: str, files: Iterable[str | None] = ()) -> list[str]:
    """Make the hub process and its data directory private; returns what could not be done.

    ``files`` are the database and secret files (0600 if they exist and are ours).
    """
    problems = []
    os.umask(0o077)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            problems.append(f"PR_SET_DUMPABLE: {os.strerror(ctypes.get_errno())}")
    except (OSError, AttributeError) as e:
        problems.append(f"PR_SET_DUMPABLE: {e}")
    root = Path(data_dir)
    paths = [root, *(p for p in _children(root) if p.is_dir() and not p.is_symlink())]
    for path in paths:
        _tighten(path, 0o700, problems)
    for name in files:
        if not name:
            continue
        for path in (Path(name), Path(f"{name}-wal"), Path(f"{name}-shm")):
            _tighten(path, 0o600, problems)
    return problems


def _children(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:
        return []


def _tighten(path: Path, mode: int, problems: list[str]) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or stat.S_IMODE(st.st_mode) & ~mode == 0:
        return
    try:
        os.chmod(path, stat.S_IMODE(st.st_mode) & mode)
    except OSError as e:
        problems.append(f"chmod {path}: {e.strerror}")


#: where root hubs hold their worker uids (one lock file a uid): every hub on the
#: machine sees the same locks, so two hubs never hand out the same uid
UID_LOCK_DIR = "/run/phoebe-spawner/worker-uids"


class UidPool:
    """Unprivileged uids for workers of a root hub, one per live worker.

    A uid is free when no hub on the machine holds it and no process runs as it (so a
    worker re-adopted after a restart, or something an earlier worker left running, is
    never joined by another session). Holding a uid means holding an exclusive
    ``flock`` on its file in :data:`UID_LOCK_DIR`: the kernel keeps two hubs (or two
    hubs in one process) from holding the same uid, and drops the lock when a hub dies.
    Shared by all spawners of the process (class-level registry per range).

    Giving a uid back kills what still runs as it (a worker's escaped grandchild), which
    takes a scan of the process table: ~30 µs a process, so with a thousand workers a
    scan per ended session made ending sessions back to back slow (and, in a thread,
    held the GIL from the hub's loop). :meth:`release_later` queues the uid for
    :data:`RELEASES`, one thread on which one scan serves every uid queued meanwhile;
    the uid stays held (never handed out) until its scan is done.
    """

    _held: dict[tuple[int, int], dict[int, int]] = {}  # range -> {uid: lock fd}
    _queued: dict[tuple[int, int], set[int]] = {}  # range -> uids waiting for a release scan
    _mutex = threading.Lock()  # allocations run in threads (they scan the process table)
    _releasing = threading.Lock()  # one release scan at a time

    def __init__(self, low: int, high: int, lock_dir: str = UID_LOCK_DIR) -> None:
        self.range = (low, high)
        self.lock_dir = lock_dir
        with self._mutex:
            self.held = self._held.setdefault(self.range, {})
            self.queued = self._queued.setdefault(self.range, set())

    def allocate(self) -> int:
        """A free uid, now held by the caller; raises LookupError when none is left
        (after giving back the uids queued for release, if any are). Blocking."""
        for attempt in range(2):
            running = running_uids()
            with self._mutex:
                for uid in range(*self.range):
                    if uid in self.held or uid in running:
                        continue
                    fd = self._lock(uid)
                    if fd is not None:
                        self.held[uid] = fd
                        return uid
                waiting = bool(self.queued)
            if not waiting or attempt:
                break
            self.release_queued()  # ended sessions' uids, still held until their scan
        raise LookupError(f"all {self.range[1] - self.range[0]} worker uids are in use")

    def claim(self, uid: int) -> bool:
        """Hold ``uid`` for a re-adopted worker; False if another hub holds it. A uid
        this process queued for release (a session of an earlier hub in the same
        process) is taken off the queue: its worker lives, so nothing may kill it."""
        with self._mutex:
            if uid in self.held:
                self.queued.discard(uid)
                return True
            fd = self._lock(uid)
            if fd is None:
                return False
            self.held[uid] = fd
            return True

    def release(self, uid: int) -> None:
        """Kill whatever still runs as ``uid`` (a worker's escaped grandchild), free it.
        Blocking (a scan of the process table); only a uid this hub holds is touched:
        another hub's worker never is."""
        with self._mutex:
            if uid not in self.held:
                return
            self.queued.add(uid)
        self.release_queued()

    def release_later(self, uid: int) -> None:
        """:meth:`release` on the :data:`RELEASES` thread, sharing its scan with every
        uid queued before it starts; returns at once."""
        with self._mutex:
            if uid not in self.held:
                return
            self.queued.add(uid)
        RELEASES.submit(self.release_queued)

    def release_queued(self) -> None:
        """Give back every queued uid with one scan of the process table: kill what runs
        as them, then unlock them. Blocking; called on the release thread (and by
        :meth:`allocate` when only queued uids are left)."""
        with self._releasing:
            with self._mutex:
                batch = set(self.queued)
            if not batch:
                return  # an earlier call's scan took them
            found = scan_processes()
            with self._mutex:
                batch &= self.queued  # a uid claimed again meanwhile is not released
            for pid, uids in found.items():
                if uids[0] in batch:  # the real uid
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            _killed_all_of(batch)
            with self._mutex:
                for uid in batch:
                    self.queued.discard(uid)
                    fd = self.held.pop(uid, None)
                    if fd is not None:
                        os.close(fd)  # drops the lock

    def _lock(self, uid: int) -> int | None:
        """An exclusive lock on ``uid``'s file (its descriptor), or None if held."""
        os.makedirs(self.lock_dir, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.lock_dir, str(uid)), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd


#: the thread uid releases run on (one at a time; its thread is joined at exit, so a
#: hub that ends its sessions and exits still kills what they left)
RELEASES = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phoebe-uid-release")

#: how long a scan of the process table answers "which uids run" for allocations
UID_SCAN_TTL = 1.0
_scan_lock = threading.Lock()
_last_scan: tuple[float, frozenset[int]] = (-UID_SCAN_TTL, frozenset())


def scan_processes() -> dict[int, tuple[int, ...]]:
    """Every process of the machine and its uids (real, effective, saved). A fresh scan
    (~30 µs a process) also serves :func:`running_uids` for its TTL."""
    global _last_scan
    found: dict[int, tuple[int, ...]] = {}
    for proc in psutil.process_iter(["uids"]):
        with contextlib.suppress(TypeError):
            if proc.info["uids"]:
                found[proc.pid] = tuple(proc.info["uids"])
    with _scan_lock:
        _last_scan = (time.monotonic(), frozenset(u for uids in found.values() for u in uids))
    return found


def _killed_all_of(uids: set[int]) -> None:
    """``uids`` no longer run (what ran as them was just sent SIGKILL, which nothing can
    survive): the cached scan stops saying they do, so they can be handed out now."""
    global _last_scan
    with _scan_lock:
        taken, running = _last_scan
        _last_scan = (taken, running - uids)


def running_uids(max_age: float = UID_SCAN_TTL) -> frozenset[int]:
    """The uids processes of this machine run as, from a scan at most ``max_age`` old.

    Scanning costs ~30 µs a process, so with a thousand workers a scan per start was the
    largest part of a start (and of a burst's). One scan serves every allocation for
    :data:`UID_SCAN_TTL`: a uid cannot start running unseen meanwhile, because only a
    worker takes a uid of the range, and it holds the uid's lock first (which
    :meth:`UidPool.allocate` checks live); :meth:`UidPool.release` kills what still runs
    as a uid before it unlocks it.
    """
    with _scan_lock:
        taken, uids = _last_scan
    if time.monotonic() - taken > max_age:
        scan_processes()
        with _scan_lock:
            uids = _last_scan[1]
    return uids


def read_paths(data_dir: str, extra: Iterable[str], factories: Iterable[str]) -> list[str]:
    """The paths a worker may read: the system's, Python's (prefixes and ``sys.path``),
    the worker package's and its session factory's, and ``extra``; pieces of any that
    contain ``data_dir`` are left out (:func:`split_around`)."""
    candidates = [*SYSTEM_READ_PATHS, sys.prefix, sys.base_prefix, sys.exec_prefix]
    candidates += [os.path.dirname(os.path.realpath(sys.executable))]
    candidates += [p for p in sys.path if p and os.path.isabs(p)]
    for module in ["phoebe_kernel_worker", *factories]:
        top = module.partition(":")[0].split(".")[0]
        with contextlib.suppress(ImportError, ValueError):
            spec = importlib.util.find_spec(top)
            if spec is not None and spec.origin:
                candidates.append(os.path.dirname(spec.origin))
    candidates += list(extra)
    result: list[str] = []
    forbidden = os.path.realpath(data_dir)
    for path in candidates:
        if not os.path.exists(path):
            continue
        for piece in split_around(os.path.realpath(path), forbidden):
            if piece not in result:
                result.append(piece)
    return result


def split_around(path: str, forbidden: str) -> list[str]:
    """``path`` if ``forbidden`` is not inside it, else the entries of ``path`` (recursively)
    that cover everything but ``forbidden``."""
    if path == forbidden:
        return []
    if not forbidden.startswith(path.rstrip(os.sep) + os.sep):
        return [path]
    pieces = []
    for child in sorted(os.listdir(path)) if os.path.isdir(path) else []:
        pieces += split_around(os.path.join(path, child), forbidden)
    return pieces


def session_factories(worker_args: list[str]) -> list[str]:
    """The ``--session-factory`` modules named in a worker command line."""
    found = []
    for i, arg in enumerate(worker_args):
        if arg == "--session-factory" and i + 1 < len(worker_args):
            found.append(worker_args[i + 1])
        elif arg.startswith("--session-factory="):
            found.append(arg.split("=", 1)[1])
    return found


def sqlite_path(db_url: str) -> str | None:
    """The database file of a SQLite URL (to be kept 0600); None for other databases."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(db_url)
    except Exception:  # a bad URL is reported when the store opens it
        return None
    db = url.database or ""
    if url.get_backend_name() != "sqlite" or db in ("", ":memory:") or db.startswith("file:"):
        return None
    return os.path.expanduser(db)
