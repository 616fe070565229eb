"""The Slurm backend: each session's worker is one batch job (``spawner_class = "slurm"``).

``spawner.py`` holds :class:`SlurmSpawner`; ``commands.py`` runs Slurm's client commands
and parses what they print, ``script.py`` renders the batch script, ``registration.py``
is the hub's one-shot listener for a job's endpoints, and ``agent.py`` is what runs on
the compute node (``python -m phoebe_spawner.spawners.slurm.agent``).

The agent is standard library and the worker protocol only: importing this package
imports nothing else, so the node never loads traitlets, tornado or the hub.
``SlurmSpawner`` is imported on first access (``phoebe_spawner.spawners.slurm:
SlurmSpawner`` stays the entry point).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .spawner import SlurmSpawner

__all__ = ["SlurmSpawner"]


def __getattr__(name: str) -> Any:
    """``SlurmSpawner``, imported when first asked for (PEP 562)."""
    if name == "SlurmSpawner":
        return importlib.import_module(".spawner", __name__).SlurmSpawner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
