"""How a worker ends, as both sides name it: exit statuses and reasons.

:data:`EXIT_NO_FREE_PORT` is the status ``python -m phoebe_kernel_worker`` exits with
when its port range is full; the local spawner (``phoebe_spawner.spawners.local``)
turns it into a capacity error. :func:`out_of_memory` words the reason a command or a
worker ended at its memory limit the same way on both sides: the worker for a
``MemoryError`` (``phoebe_kernel_worker.worker``), the hub for a worker it killed or
found over ``mem_limit``. Pure: no sockets, no PHOEBE.
"""

from __future__ import annotations

__all__ = ["EXIT_NO_FREE_PORT", "describe_bytes", "out_of_memory"]

#: Exit status of a worker that found no free port in its range (the pool is full).
EXIT_NO_FREE_PORT = 75  # EX_TEMPFAIL


def describe_bytes(n: int) -> str:
    """``n`` bytes as people write limits: ``4 GiB``, ``256 MiB``, ``1.5 GiB``."""
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def out_of_memory(limit: int | None) -> str:
    """The reason a command or a worker ended at its memory limit, worded the same by
    the worker (a MemoryError) and the hub (a worker killed or over ``mem_limit``)."""
    return f"out of memory (limit {describe_bytes(limit)})" if limit else "out of memory"
