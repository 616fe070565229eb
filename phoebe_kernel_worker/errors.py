"""Exceptions the PHOEBE kernel worker raises for client mistakes.

:class:`CommandError` is what :meth:`phoebe_kernel_worker.commands.PhoebeSession.dispatch`
raises for an unknown command or a rejected argument; its ``str()`` is a message meant
for the client.  :class:`UnsafeInput` is the subclass raised by
:mod:`phoebe_kernel_worker.safety` when an argument could make PHOEBE run code, start
processes or touch files.  The worker's main loop turns both into
``{"success": false, "error": str(exc)}``.
"""

from __future__ import annotations


class CommandError(Exception):
    """A command was unknown or its arguments were rejected; ``str()`` is client-facing."""


class UnsafeInput(CommandError):
    """An argument was refused because PHOEBE could evaluate or execute it."""


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
