"""CPU classes for local workers: a heavy command yields the CPU to interactive work.

A ``run_compute`` takes a core for seconds or minutes; on a machine with few cores the
hub, and other users' quick commands, then wait behind it for the scheduler's slices.
With ``SessionManager.cpu_isolation`` on (the default), the session manager keeps a
cgroup tree in the kernel's ``cpu`` hierarchy (version 1 or 2)::

    <parent>/phoebe-spawner-<id>/hub        the hub and its helpers (the fork server)
    <parent>/phoebe-spawner-<id>/s-<sid>    one per session, holding its worker

and sets ``cpu.idle`` on a session's group while it runs one of the
``background_commands``: the kernel then runs it only when no task of a sibling
group wants the CPU, so the hub and the other sessions preempt it at once. The
command still gets every cycle nobody else wants; nothing is throttled.

Weights: against the rest of the machine the tree weighs as much as the processes in
its ``hub`` group did as separate ones (the hub, the fork server, forked workers waiting
for their group): one group for a burst of starts would otherwise get one process's
share on a machine that runs anything else (measured on a loaded machine: starts past
their 60 s timeout, where separate processes took 6 s). Sessions in a background
command do not count: a class computing at once yields to the rest of the machine as
it yields to the hub (when the tree weighed forty computes, every process outside it,
the TA's browser or ssh among them, got 1/41 of the CPU and waited seconds: see
docs/performance.md).
The ``hub`` group keeps the default weight at rest: a heavier one counts as load on the
CPU the hub last ran on, and the kernel's load balancer then moves the idle computes
(whose load counts almost nothing) off that CPU, leaving it half used and the class
unevenly served (measured: computes 96-129 s with 100x, see docs/performance.md). While
workers start, it weighs ``START_WEIGHT`` sessions for each start in flight: a starting
worker is forked into it and stays there until it is connected, so with the default
weight a class's burst of starts shared one session's slice with every session already
running its first command (measured: the last of 40 ready 6.5 s after the burst, against
0.9 s for the same starts alone). A start is short and a person waits for it; the weight
goes back once the last start in flight is done.

``<parent>`` is the hub's own cgroup unless configured, and must be writable by the
hub (root, or a delegated subtree such as systemd's ``Delegate=yes``). A hub that
cannot build the tree (no writable ``cpu`` hierarchy, not root, a kernel without
``cpu.idle``: Linux >= 5.15) says why in one warning at start-up and runs without it;
anything failing later is logged and leaves the workers where they are: isolation is
an optimisation, never a reason to refuse a session.

cgroup v2: the hub moves into ``hub`` before it enables ``+cpu`` in ``<parent>``'s
``cgroup.subtree_control`` (a group holding processes cannot hand controllers down), so
``<parent>`` may be the group the service manager started the hub in, as long as no
other process is in it. That path is written to the kernel's rules but not run here
(the test machine has cgroup v1).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .bus import SessionChanged

log = logging.getLogger(__name__)

#: a group's weight file, by cgroup version
WEIGHT_FILE = {1: "cpu.shares", 2: "cpu.weight"}
#: (default, maximum) of that file
WEIGHTS = {1: (1024, 262144), 2: (100, 10000)}
#: how many sessions the ``hub`` group weighs for each worker start in flight
START_WEIGHT = 16


def cpu_hierarchy() -> tuple[Path, str, int] | None:
    """Where this process sits in the ``cpu`` hierarchy: ``(mount, own path, version)``."""
    return hierarchy("cpu")


def hierarchy(controller: str) -> tuple[Path, str, int] | None:
    """Where this process sits in the hierarchy of ``controller`` (``cpu``, ``memory``):
    ``(mount, own path, version)``, or None when the controller is not available.
    Also used by :mod:`.memory`."""
    try:
        own = Path("/proc/self/cgroup").read_text().splitlines()
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    v1_path = v2_path = None
    for line in own:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            v1_path = path
        elif controllers == "":
            v2_path = path
    for line in mounts:
        fields = line.split()
        sep = fields.index("-")
        fstype = fields[sep + 1]
        options = fields[sep + 3].split(",") + fields[5].split(",")
        mount, mount_root = Path(fields[4]), fields[3]
        if v1_path is not None and fstype == "cgroup" and controller in options:
            return mount, _under(v1_path, mount_root), 1
        if v1_path is None and v2_path is not None and fstype == "cgroup2":
            available = (mount / "cgroup.controllers").read_text().split()
            if controller in available:
                return mount, _under(v2_path, mount_root), 2
    return None


def tree_name(key: str) -> str:
    """The name of the hub's cgroup tree for data directory ``key`` (the same name in
    every hierarchy, so a restarted hub finds its re-adopted workers' groups)."""
    return "phoebe-spawner-" + hashlib.sha256(os.path.abspath(key).encode()).hexdigest()[:12]


def _under(path: str, mount_root: str) -> str:
    """``path`` (from /proc/self/cgroup) relative to what the mount shows (its root)."""
    if mount_root != "/" and (path == mount_root or path.startswith(mount_root + "/")):
        return path[len(mount_root) :] or "/"
    return path


class CpuClasses:
    """The hub's cgroup tree: one group for the hub, one per session's worker.

    Built by :meth:`setup` (the session manager, at start-up); the manager calls
    :meth:`starting` around a worker's start, :meth:`place` when a session's worker is
    connected, :meth:`background` around background commands, :meth:`release` when a
    session ends and :meth:`close` at shutdown (:meth:`release` through
    :meth:`on_session_changed`). Every method is a few small writes to the cgroup file
    system.
    """

    def __init__(self, root: Path, home: Path, version: int = 1) -> None:
        self.root = root
        #: where the hub was before (it goes back there at :meth:`close`)
        self.home = home
        self.version = version
        self._tree_weight = 0
        self._hub_weight = 1  # in default weights; a new ``hub`` group has the default
        self._starts = 0
        self._lock = threading.Lock()  # place() runs in threads, the rest on the loop

    @classmethod
    def setup(cls, parent: str, key: str) -> CpuClasses | None:
        """Create the tree under ``parent`` (empty: this process's own cgroup) and move
        this process into its ``hub`` group; ``key`` (the hub's data directory) names the
        tree, so a restarted hub finds its re-adopted workers' groups. None if not
        possible, with one warning saying why (the hub then runs without priorities).
        Blocking: call it in a thread."""
        where = cpu_hierarchy()
        if where is None:
            _off("this process has no cgroup 'cpu' controller")
            return None
        mount, own, version = where
        home = mount / own.lstrip("/")
        base = Path(parent) if parent else _outside_trees(home)
        if not _is_group_under(base, mount):
            _off(f"{base} is not a group of the cgroup cpu hierarchy at {mount}")
            return None
        tree = cls(base / tree_name(key), home, version)
        new_root = not tree.root.exists()  # on cgroup v2 the memory limits may share it
        try:
            tree.root.mkdir(exist_ok=True)
            (tree.root / "hub").mkdir(exist_ok=True)
            # first out of ``base``: on v2 a group that holds processes cannot hand a
            # controller to its children (EBUSY), and the hub may be the one in it
            (tree.root / "hub" / "cgroup.procs").write_text(str(os.getpid()))
            if version == 2:
                enable_controller(base, "cpu")
                enable_controller(tree.root, "cpu")
            if not (tree.root / "hub" / "cpu.idle").exists():
                raise OSError(errno.ENOTSUP, "this kernel has no cpu.idle (Linux >= 5.15)")
            tree._weigh_tree()
        except OSError as e:
            hint = " (needs root or a delegated cgroup)" if e.errno == errno.EACCES else ""
            _off(f"cannot use the cgroup tree {tree.root}: {e}{hint}")
            tree.undo(new_root)
            return None
        log.info("cpu isolation: workers in per-session cgroups under %s", tree.root)
        return tree

    def undo(self, remove_root: bool) -> None:
        """A :meth:`setup` that failed half way: the hub back home, the ``hub`` group
        gone, and the tree root too if ``remove_root`` (setup made it)."""
        self._go_home()
        remove_group(self.root / "hub", "hub")
        if remove_root:
            with contextlib.suppress(OSError):
                self.root.rmdir()

    def _group(self, session_id: str) -> Path:
        return self.root / f"s-{session_id}"

    def place(self, session_id: str, pid: int) -> None:
        """Move the worker ``pid`` (and its threads) into the session's own group."""
        group = self._group(session_id)
        try:
            group.mkdir(exist_ok=True)
            (group / "cgroup.procs").write_text(str(pid))
        except OSError as e:  # e.g. the worker already exited (ESRCH)
            log.info("session %s: worker %s not placed in %s: %s", session_id, pid, group, e)
        self._weigh_tree()  # the workers still starting in the hub's group count

    def background(self, session_id: str, on: bool) -> None:
        """Mark the session's group idle (``on``) or back to normal."""
        try:
            (self._group(session_id) / "cpu.idle").write_text("1" if on else "0")
        except OSError as e:  # a session whose worker was never placed (not local)
            log.debug("session %s: cpu.idle not set: %s", session_id, e)

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Around one worker's start, on the event loop (the manager's launch): the
        ``hub`` group, where the worker is forked and waits until :meth:`place` moves it,
        weighs ``START_WEIGHT`` sessions for each start in flight, and the default again
        when none is left (one small write each time the weight changes)."""
        self._starts += 1
        self._weigh_hub()
        try:
            yield
        finally:
            self._starts -= 1
            self._weigh_hub()

    def _weigh_hub(self) -> None:
        default, most = WEIGHTS[self.version]
        times = min(1 + START_WEIGHT * self._starts, most // default)
        if times == self._hub_weight:
            return
        try:
            self._set_weight(self.root / "hub", times)
            self._hub_weight = times
        except OSError as e:
            log.info("cpu isolation: weight of %s/hub not set: %s", self.root, e)

    def on_session_changed(self, change: SessionChanged[Any]) -> None:
        """Bus subscriber (the manager subscribes it): an ended session's group goes."""
        if change.event not in ("started", "stopping"):
            self.release(change.session.id)

    def release(self, session_id: str) -> None:
        """Remove the group of an ended session (it is empty once the worker is gone)."""
        remove_group(self._group(session_id), session_id)

    def _weigh_tree(self) -> None:
        """Give the tree the weight the processes of the hub's group had as separate
        ones (the hub, the fork server, workers still starting), so that gathering them
        in one group does not shrink their share against the rest of the machine: a
        class starting on a shared machine gets what it got without isolation. Workers
        in a background command do not count (they are the machine's idle work). Called
        by setup, by :meth:`place` (in a thread) and on the event loop."""
        with self._lock:
            try:
                # the hub, the fork server and the workers it forked that wait for
                # their own group (a burst of starts)
                starting = len((self.root / "hub" / "cgroup.procs").read_text().split())
            except OSError:
                starting = 2
            weight = max(starting, 2)
            if weight == self._tree_weight:
                return
            try:
                self._set_weight(self.root, weight)
                self._tree_weight = weight
            except OSError as e:
                log.info("cpu isolation: weight of %s not set: %s", self.root, e)

    def _set_weight(self, group: Path, times: int) -> None:
        """Weigh ``group`` as ``times`` default groups (capped at the kernel's maximum)."""
        default, most = WEIGHTS[self.version]
        (group / WEIGHT_FILE[self.version]).write_text(str(min(default * times, most)))

    def close(self) -> None:
        """Move the hub back where it was and remove every empty group, then the tree
        (groups of workers left running for re-adoption stay, for the next hub)."""
        self._go_home()
        remove_tree(self.root)

    def _go_home(self) -> None:
        """Move this process back to the group it came from or, if that is gone (an
        earlier hub of the same process closed it), to its nearest ancestor."""
        group = self.home
        while not (group / "cgroup.procs").exists() and group.parent != group:
            group = group.parent
        try:
            (group / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as e:  # v2: EBUSY once the group hands controllers down
            log.info("cpu isolation: the hub stays in %s/hub until it exits: %s", self.root, e)


def _off(reason: str) -> None:
    """The one start-up line of a hub that runs without cpu isolation."""
    log.warning(
        "cpu isolation is off: %s; commands share the CPU without priorities "
        "(SessionManager.cpu_isolation = False silences this)",
        reason,
    )


def _outside_trees(group: Path) -> Path:
    """Where a hub in ``group`` builds its tree: ``group``, or, if that is the ``hub``
    group of another hub's tree (a second hub in one process: the tests), beside that
    tree rather than inside it."""
    if group.name == "hub" and group.parent.name.startswith("phoebe-spawner-"):
        return group.parent.parent
    return group


def _is_group_under(group: Path, mount: Path) -> bool:
    """Whether ``group`` is a cgroup directory of the hierarchy mounted at ``mount``."""
    try:
        group.resolve().relative_to(mount.resolve())
    except ValueError:
        return False
    return (group / "cgroup.procs").is_file()


def enable_controller(group: Path, controller: str) -> None:
    """cgroup v2: let ``group``'s children use ``controller`` (``cpu``, ``memory``)."""
    control = group / "cgroup.subtree_control"
    if controller not in control.read_text().split():
        control.write_text(f"+{controller}")


def remove_group(group: Path, session_id: str) -> None:
    """Remove an ended session's (empty) group; one that still holds a worker that
    could not be stopped stays, with a log line."""
    try:
        group.rmdir()
    except FileNotFoundError:
        pass
    except OSError as e:  # EBUSY
        log.info("session %s: cgroup %s kept: %s", session_id, group, e)


def remove_tree(root: Path, prefix: str = "") -> None:
    """Remove ``root``'s empty groups (those named ``prefix...``), then ``root`` itself;
    a group that still holds a running worker (left for re-adoption) stays."""
    if not root.is_dir():
        return
    for group in root.iterdir():
        if group.is_dir() and group.name.startswith(prefix):
            with contextlib.suppress(OSError):
                group.rmdir()
    with contextlib.suppress(OSError):
        root.rmdir()
