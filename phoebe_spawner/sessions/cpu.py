"""CPU classes for local workers: a heavy command yields the CPU to interactive work.

A ``run_compute`` takes a core for seconds or minutes; on a machine with few cores the
hub, and other users' quick commands, then wait behind it for the scheduler's slices.
With ``SessionManager.cpu_isolation`` on, the session manager keeps a cgroup tree in
the kernel's ``cpu`` hierarchy (version 1 or 2)::

    <parent>/phoebe-spawner-<id>/hub        the hub and its helpers (the fork server)
    <parent>/phoebe-spawner-<id>/s-<sid>    one per session, holding its worker

and sets ``cpu.idle`` on a session's group while it runs one of the
``background_commands``: the kernel then runs it only when no task of a sibling
group wants the CPU, so the hub and the other sessions preempt it at once. The
command still gets every cycle nobody else wants; nothing is throttled.

``<parent>`` is the hub's own cgroup unless configured, and must be writable by the
hub (root, or a delegated subtree such as systemd's ``Delegate=yes``). Anything that
fails here is logged and leaves the workers where they are: isolation is an
optimisation, never a reason to refuse a session. Linux >= 5.15 (``cpu.idle``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from .bus import SessionChanged

log = logging.getLogger(__name__)


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
    :meth:`place` when a session's worker is connected, :meth:`background` around
    background commands, :meth:`release` when a session ends and :meth:`close` at
    shutdown (:meth:`release` through :meth:`on_session_changed`). Every method is a few
    small writes to the cgroup file system.
    """

    def __init__(self, root: Path, home: Path) -> None:
        self.root = root
        #: where the hub was before (it goes back there at :meth:`close`)
        self.home = home

    @classmethod
    def setup(cls, parent: str, key: str) -> CpuClasses | None:
        """Create the tree under ``parent`` (empty: this process's own cgroup) and move
        this process into its ``hub`` group; ``key`` (the hub's data directory) names the
        tree, so a restarted hub finds its re-adopted workers' groups. None if not
        possible. Blocking: call it in a thread."""
        where = cpu_hierarchy()
        if where is None:
            log.warning("cpu isolation is off: no cgroup 'cpu' controller for this process")
            return None
        mount, own, version = where
        home = mount / own.lstrip("/")
        base = Path(parent) if parent else home
        tree = cls(base / tree_name(key), home)
        try:
            if version == 2:
                enable_controller(base, "cpu")
            tree.root.mkdir(exist_ok=True)
            if version == 2:
                enable_controller(tree.root, "cpu")
            (tree.root / "hub").mkdir(exist_ok=True)
            (tree.root / "hub" / "cgroup.procs").write_text(str(os.getpid()))
            if not (tree.root / "hub" / "cpu.idle").exists():
                raise OSError(errno.ENOTSUP, "this kernel has no cpu.idle (Linux >= 5.15)")
        except OSError as e:
            log.warning("cpu isolation is off: cannot use the cgroup tree %s: %s", tree.root, e)
            tree.close()
            return None
        log.info("cpu isolation: workers in per-session cgroups under %s", tree.root)
        return tree

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

    def background(self, session_id: str, on: bool) -> None:
        """Mark the session's group idle (``on``) or back to normal."""
        try:
            (self._group(session_id) / "cpu.idle").write_text("1" if on else "0")
        except OSError as e:  # a session whose worker was never placed (not local)
            log.debug("session %s: cpu.idle not set: %s", session_id, e)

    def on_session_changed(self, change: SessionChanged[Any]) -> None:
        """Bus subscriber (the manager subscribes it): an ended session's group goes."""
        if change.event not in ("started", "stopping"):
            self.release(change.session.id)

    def release(self, session_id: str) -> None:
        """Remove the group of an ended session (it is empty once the worker is gone)."""
        remove_group(self._group(session_id), session_id)

    def close(self) -> None:
        """Move the hub back where it was and remove every empty group, then the tree
        (groups of workers left running for re-adoption stay, for the next hub)."""
        try:
            (self.home / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as e:
            log.warning("cpu isolation: could not move the hub back to %s: %s", self.home, e)
        remove_tree(self.root)


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
