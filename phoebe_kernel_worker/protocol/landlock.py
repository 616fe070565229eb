"""Which Landlock ABI the running kernel offers: the one kernel probe both sides make.

The worker's wall (``phoebe_kernel_worker.wall``) handles every right of that ABI;
the local spawner (``phoebe_spawner.spawners.local``) logs at hub start which wall its
workers will get. Standard library only (``ctypes``): no sockets, no PHOEBE.
"""

from __future__ import annotations

import ctypes
from typing import Any

__all__ = [
    "LANDLOCK_CREATE_RULESET_VERSION",
    "SYS_LANDLOCK_CREATE_RULESET",
    "landlock_abi",
    "libc",
]

SYS_LANDLOCK_CREATE_RULESET = 444  # the same number on every Linux architecture
LANDLOCK_CREATE_RULESET_VERSION = 1


def libc() -> Any:
    """The C library, with ``errno`` kept for :func:`ctypes.get_errno`."""
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The Landlock ABI version of the running kernel; 0 when it has none (or it is off)."""
    try:
        version = int(
            libc().syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
        )
    except (OSError, AttributeError):
        return 0
    return max(version, 0)
