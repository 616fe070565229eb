"""Resolve configurable backends (spawners, authenticators) by name or by class.

Backends register under entry-point groups (``phoebe_spawner.spawners``,
``phoebe_spawner.authenticators``), so a third-party package can add one and users pick
it by name in config. Built-in names also resolve from a source checkout that was
never installed. Called by the app while wiring; never on a request path.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

BUILTIN: dict[str, dict[str, str]] = {
    "phoebe_spawner.spawners": {
        "local": "phoebe_spawner.spawners.local:LocalProcessSpawner",
        "local-forkserver": "phoebe_spawner.spawners.forkserver:ForkServerSpawner",
        "docker": "phoebe_spawner.spawners.docker:DockerSpawner",
        "slurm": "phoebe_spawner.spawners.slurm:SlurmSpawner",
    },
    "phoebe_spawner.authenticators": {
        "none": "phoebe_spawner.auth.none:NoAuthenticator",
        "jwt": "phoebe_spawner.auth.jwt:JWTAuthenticator",
        "external": "phoebe_spawner.auth.external:ExternalAuthenticator",
        "hub": "phoebe_spawner.auth.hub:HubAuthenticator",
    },
}


def import_object(spec: str) -> Any:
    """Import ``"pkg.module:Name"`` or ``"pkg.module.Name"``."""
    if ":" in spec:
        module, _, attr = spec.partition(":")
    else:
        module, _, attr = spec.rpartition(".")
    if not module or not attr:
        raise ImportError(f"{spec!r} is not a module path")
    return getattr(importlib.import_module(module), attr)


def registered(group: str) -> dict[str, str]:
    """Every name in ``group`` and the ``"module:Class"`` it stands for: the built-in
    names and installed plug-ins' entry points (a plug-in wins over a built-in)."""
    names = dict(BUILTIN.get(group, {}))
    names.update({ep.name: ep.value for ep in entry_points(group=group)})
    return names


def load_class(group: str, value: str | type) -> type:
    """The class named ``value`` in ``group``: an entry-point name, a dotted path or a class."""
    if isinstance(value, type):
        return value
    for ep in entry_points(group=group):
        if ep.name == value:
            cls = ep.load()
            if not isinstance(cls, type):
                raise ImportError(f"entry point {value!r} in {group} is not a class")
            return cls
    if value in BUILTIN.get(group, {}):
        return import_object(BUILTIN[group][value])
    if "." in value or ":" in value:
        return import_object(value)
    known = sorted({ep.name for ep in entry_points(group=group)} | set(BUILTIN.get(group, {})))
    raise ImportError(f"unknown name {value!r} for {group}; known: {', '.join(known)}")
