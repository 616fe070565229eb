"""The Docker backend: one hardened container per session (``spawner_class = "docker"``).

``spawner.py`` holds :class:`DockerSpawner` (its traits and the container's lifecycle),
``engine.py`` the hub's connection to the Docker engine (blocking SDK calls on threads of
its own, never on the event loop) and ``layout.py`` how a container is laid out (names,
mounts, limits, security options). The docker SDK itself is imported only when a
session first talks to the engine.
"""

from .spawner import DockerSpawner

__all__ = ["DockerSpawner"]
