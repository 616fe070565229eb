"""What a worker reports of its memory: the USS, PSS and RSS of its process tree.

Called by the worker's ``status`` (``phoebe_kernel_worker.worker``), which the hub's
memory loop asks each running session for once per ``memory_interval``. With a thousand
sessions that is dozens of reports a second, so a report reads only the worker's own
processes: its descendants come from ``/proc/<pid>/task/<tid>/children``, not from
``psutil.Process.children``, which reads every process on the machine (a thousand
workers each scanning a thousand processes cost the idle machine 73 % of a core).
"""

from __future__ import annotations

import os

import psutil

MIB = 1024 * 1024


def descendants(pid: int) -> list[int]:
    """The pids of ``pid``'s descendants, read from the kernel's per-thread ``children``
    lists (only this tree is read). A process that ends meanwhile is left out; a kernel
    without those lists (``CONFIG_PROC_CHILDREN``) gets psutil's scan of every process."""
    if not os.path.exists(f"/proc/{pid}/task/{pid}/children"):
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:  # it ended since its parent listed it
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as listed:
                    children = [int(child) for child in listed.read().split()]
            except OSError:  # the thread ended
                continue
            found += children
            pending += children
    return found


def process_tree_memory_mib(pid: int | None = None) -> dict[str, float]:
    """Memory of a process (default: this one) and its descendants in MiB, three ways.

    ``uss``: private memory, what ending the tree would give back; a session forked from
    a fork-server template holds only the pages it changed (a few MiB when idle). ``pss``:
    private memory plus an even share of each page shared with other processes (the
    template's, libraries'): summed over every worker it is the machine's total. ``rss``:
    every page mapped, shared ones counted in full, in each worker that maps them.
    Where the kernel gives no USS/PSS (not Linux, or ``/proc`` unreadable) both fall
    back to what it gives (RSS at worst).
    """
    try:
        root = psutil.Process(pid)
        procs = [root, *(psutil.Process(p) for p in descendants(root.pid))]
    except psutil.Error:
        return {"uss": 0.0, "pss": 0.0, "rss": 0.0}
    uss = pss = rss = 0
    for p in procs:
        try:
            info = p.memory_full_info()
        except psutil.AccessDenied:
            try:
                info = p.memory_info()
            except psutil.Error:
                continue
        except psutil.Error:  # gone since it was listed
            continue
        rss += info.rss
        uss += getattr(info, "uss", info.rss)
        pss += getattr(info, "pss", getattr(info, "uss", info.rss))
    return {"uss": uss / MIB, "pss": pss / MIB, "rss": rss / MIB}
