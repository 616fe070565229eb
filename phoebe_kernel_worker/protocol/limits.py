"""The schema of a worker's cost caps, as the hub configures and the worker reads them.

The hub validates ``Spawner.worker_limits`` with :meth:`WorkerLimits.from_mapping`
(``phoebe_spawner.spawners.base``) and sends the dict in the connection file's
``limits`` field; the worker builds its :class:`WorkerLimits` from it
(``phoebe_kernel_worker.factories``) and enforces it (``phoebe_kernel_worker.safety.costs``,
whose docstring explains what each cap bounds and why the defaults are what they are).
Pure: no sockets, no PHOEBE.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["DEFAULT_LIMITS", "WorkerLimits"]


@dataclass(frozen=True)
class WorkerLimits:
    """The caps of one worker (see :mod:`phoebe_kernel_worker.safety.costs`: what each bounds)."""

    max_ntriangles: int = 5_000
    max_mesh_values: int = 10_000_000
    max_array_length: int = 1_000_000

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> WorkerLimits:
        """Build limits from the connection file's ``limits`` dict (missing keys: defaults).

        Raises ValueError for unknown keys or values that are not positive integers, so
        a typo in the hub's configuration stops the worker instead of lifting a cap.
        """
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown worker limits {sorted(unknown)} (known: {sorted(known)})")
        for key, value in data.items():
            if type(value) is not int or value <= 0:
                raise ValueError(f"worker limit {key} must be a positive integer, not {value!r}")
        return cls(**data)


DEFAULT_LIMITS = WorkerLimits()
