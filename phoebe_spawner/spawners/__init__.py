"""Spawner backends: the base contract and one module per backend."""

from .base import ByteSpecification, Spawner, SpawnError

__all__ = ["ByteSpecification", "SpawnError", "Spawner"]
