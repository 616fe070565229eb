"""Spawner backends: the contract (``base.py``) and one module or package per backend.

``Spawner``, ``SpawnError`` and ``ByteSpecification`` are imported from ``base`` on first
access (PEP 562), so that importing a backend's node-side code (the Slurm agent) does not
load the hub's configuration machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import ByteSpecification, Spawner, SpawnError

__all__ = ["ByteSpecification", "SpawnError", "Spawner"]


def __getattr__(name: str) -> Any:
    """The contract's names, imported from ``base`` when first asked for."""
    if name in __all__:
        return getattr(importlib.import_module(".base", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
