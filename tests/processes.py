"""What the tests ask of a worker process from outside: whether it is gone, and whether
it is stuck inside the test session factory's ``hang`` command."""

from __future__ import annotations

import psutil


def gone(proc: psutil.Process) -> bool:
    """Whether ``proc`` has ended (a zombie its new parent has not reaped yet has)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def sigint_blocked(pid: int) -> bool:
    """Whether the worker's main thread blocks SIGINT (it is inside the test ``hang``)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/status") as f:
            mask = next(line for line in f if line.startswith("SigBlk:")).split()[1]
    except (OSError, StopIteration):
        return False
    return bool(int(mask, 16) & (1 << (2 - 1)))  # SIGINT is signal 2


def spares_of(template_pid: int) -> list[psutil.Process]:
    """The fork server's spares: its children still waiting for a request (they are named
    ``phoebe-spare`` until they take one)."""
    found = []
    for child in psutil.Process(template_pid).children():
        try:
            if child.name() == "phoebe-spare" and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found
