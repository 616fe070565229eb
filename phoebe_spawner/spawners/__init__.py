"""Spawner backends: the contract (``base.py``) and one module or package per backend."""

from .base import ByteSpecification, Spawner, SpawnError

__all__ = ["ByteSpecification", "SpawnError", "Spawner"]
