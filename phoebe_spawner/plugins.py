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

AUTH_GROUP = "phoebe_spawner.authenticators"
SPAWNER_GROUP = "phoebe_spawner.spawners"
#: how users choose a name in each group, for messages and ``--help``
CHOSEN_BY: dict[str, tuple[str, str]] = {
    SPAWNER_GROUP: ("--spawner", "spawners"),
    AUTH_GROUP: ("--auth-mode", "auth modes"),
}

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


class UnknownName(ImportError):
    """A name that is neither registered in its group nor a dotted class path; the
    message lists the valid names (the app prints it as the reason it cannot start)."""

    def __init__(self, group: str, value: str) -> None:
        option, kind = CHOSEN_BY.get(group, (group, "names"))
        known = ", ".join(sorted(registered(group)))
        super().__init__(
            f"unknown {option} name {value!r}; the installed {kind} are {known} "
            "(or give a dotted class path)"
        )


def load_class(group: str, value: str | type) -> type:
    """The class named ``value`` in ``group``: an entry-point name (case-insensitive), a
    dotted path or a class. :class:`UnknownName` lists the valid names."""
    if isinstance(value, type):
        return value
    wanted = value.strip().lower()
    for ep in entry_points(group=group):
        if ep.name.lower() == wanted:
            cls = ep.load()
            if not isinstance(cls, type):
                raise ImportError(f"entry point {value!r} in {group} is not a class")
            return cls
    builtin = {name.lower(): spec for name, spec in BUILTIN.get(group, {}).items()}
    if wanted in builtin:
        return import_object(builtin[wanted])
    if "." in value or ":" in value:
        return import_object(value)
    raise UnknownName(group, value)


def installed(group: str) -> list[tuple[str, str | None]]:
    """Every name in ``group`` with why it cannot be used here (None when its class
    imports), sorted by name; ``phoebe-spawner --help`` lists them."""
    found: list[tuple[str, str | None]] = []
    for name in sorted(registered(group)):
        try:
            load_class(group, name)
        except Exception as e:  # a plug-in whose dependencies are not installed here
            missing = getattr(e, "name", None)
            found.append((name, f"needs {missing}" if missing else " ".join(str(e).split())))
        else:
            found.append((name, None))
    return found


def help_lines() -> list[str]:
    """What ``phoebe-spawner --help`` says about backends: each group's installed names."""
    lines = []
    for group in (SPAWNER_GROUP, AUTH_GROUP):
        option, kind = CHOSEN_BY[group]
        names = ", ".join(
            name if why is None else f"{name} ({why})" for name, why in installed(group)
        )
        lines.append(f"Installed {kind} ({option}, case-insensitive): {names}")
    return [*lines, ""]
