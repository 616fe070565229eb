"""Fail-closed configuration: load a config file strictly and check every setting's name.

traitlets, left to itself, prints a traceback for a config file that does not load and
starts with the defaults, only warns about an unknown trait (``auth_mdoe``) and ignores
an unknown class (``SesionManager``) silently, so a typo can start a hub with weaker
security than intended. :func:`load_checked` (:func:`load_file`, :func:`check`) and
:class:`CheckedArgLoader` turn each of those into a :class:`ConfigProblem` whose message
is one line naming the file, the line and the nearest valid name; :func:`loopback_only`
tells whether an address is safe for auth mode none. The app (and its subcommands) call
them before any setting is applied; nothing here runs on a request path.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import ipaddress
import os
import socket
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitlets import TraitError, TraitType
from traitlets.config import Config, Configurable
from traitlets.config.loader import (
    DeferredConfig,
    KVArgParseConfigLoader,
    LazyConfigValue,
    PyFileConfigLoader,
)

from .plugins import load_class, registered


class ConfigProblem(Exception):
    """A configuration mistake; ``str()`` is the one line the hub prints before it exits."""


@dataclass(frozen=True)
class KnownClasses:
    """What may be configured: classes by name, and names known only by name (a backend
    whose module cannot be imported here, e.g. ``HubAuthenticator`` without jupyterhub):
    their sections are accepted unchecked."""

    classes: dict[str, list[type[Configurable]]]
    unchecked: frozenset[str] = frozenset()

    @classmethod
    def of(cls, classes: Iterable[type], unchecked: Iterable[str] = ()) -> KnownClasses:
        """Every configurable in ``classes`` and their configurable base classes (a
        ``c.Spawner`` section applies to every spawner, as in traitlets)."""
        by_name: dict[str, list[type[Configurable]]] = {}
        for c in classes:
            for k in c.mro():
                if isinstance(k, type) and issubclass(k, Configurable):
                    same = by_name.setdefault(k.__name__, [])
                    if k not in same:
                        same.append(k)
        return cls(by_name, frozenset(unchecked) - set(by_name))

    def traits(self, section: str) -> dict[str, TraitType[Any, Any]]:
        """The configurable traits a ``section`` may set: the section's class's own, and
        those of its known subclasses (which the section's values also reach)."""
        owners = self.classes.get(section, [])
        found: dict[str, TraitType[Any, Any]] = {}
        for group in self.classes.values():
            for k in group:
                if any(issubclass(k, owner) for owner in owners):
                    for name, trait in k.class_traits(config=True).items():
                        found.setdefault(name, trait)
        return found


def known_classes(
    base: Iterable[type], groups: Iterable[str], configured: Iterable[tuple[str, Any]] = ()
) -> KnownClasses:
    """The configurables an app knows: ``base`` (its ``classes``, subcommands), every
    backend registered in the plug-in ``groups``, and the classes ``configured`` as
    ``(group, name or dotted path)`` pairs. A registered backend that cannot be imported
    here is known by its name only."""
    classes = list(base)
    unchecked = set()
    for group in groups:
        for name, spec in registered(group).items():
            try:
                classes.append(load_class(group, name))
            except Exception:  # its dependencies are not installed: known, not checkable
                unchecked.add(spec.rpartition(":")[2].rpartition(".")[2])
    for group, value in configured:
        if isinstance(value, str) and value:
            with contextlib.suppress(Exception):  # not importable: start-up reports it
                classes.append(load_class(group, value))
    return KnownClasses.of(classes, unchecked)


class CheckedArgLoader(KVArgParseConfigLoader):
    """The command-line loader of traitlets, which warns about ``--Class.trait`` names it
    does not know and keeps words that follow no option as ``extra_args``, with both
    refused: ``check(config)`` runs on its result before anything applies it, and no
    command takes a positional argument (``--X.uids 1 2`` sets 1 and leaves 2 behind)."""

    def __init__(self, *args: Any, check: Callable[[Config], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._check = check

    def load_config(self, *args: Any, **kwargs: Any) -> Config:
        config = super().load_config(*args, **kwargs)
        if self.extra_args:
            raise ConfigProblem(
                f"unexpected argument {self.extra_args[0]!r} on the command line (a list "
                "option takes one value a flag: --Class.trait=1 --Class.trait=2, or "
                "--Class.trait=[1,2])"
            )
        self._check(config)
        return config


def _nearest(name: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def setting_lines(source: str) -> dict[tuple[str, ...], int]:
    """Where a config file first names ``c.Class`` and ``c.Class.trait`` (also
    ``c["Class"]["trait"]``): ``{("Class",): line, ("Class", "trait"): line}``."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    lines: dict[tuple[str, ...], int] = {}

    def chain(node: ast.AST) -> list[str] | None:
        names: list[str] = []
        while True:
            if isinstance(node, ast.Attribute):
                names.append(node.attr)
                node = node.value
            elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                names.append(str(node.slice.value))
                node = node.value
            elif isinstance(node, ast.Name) and node.id == "c":
                return names[::-1]
            else:
                return None

    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute | ast.Subscript):
            continue
        names = chain(node)
        if names:
            for depth in (1, 2):
                if len(names) >= depth:
                    key = tuple(names[:depth])
                    lines[key] = min(lines.get(key, node.lineno), node.lineno)
    return lines


def load_file(path: str) -> Config:
    """Run the Python config file at ``path`` and return its settings (not yet checked).

    A syntax error or an exception while it runs is a :class:`ConfigProblem` naming the
    file and the line (the innermost line of the file itself in the traceback).
    """
    full = os.path.abspath(path)
    loader = PyFileConfigLoader(os.path.basename(full), path=os.path.dirname(full))
    try:
        config = loader.load_config()
    except SyntaxError as e:
        raise ConfigProblem(f"{path}, line {e.lineno}: syntax error: {_one_line(e.msg)}") from None
    except Exception as e:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == full]
        where = f"{path}, line {frames[-1].lineno}" if frames else path
        raise ConfigProblem(
            f"{where}: the config file raised {type(e).__name__}: {_one_line(str(e))}"
        ) from None
    return config


def load_checked(
    path: str, known_for: Callable[[Config], KnownClasses], cli: Config | None = None
) -> Config:
    """Load the config file at ``path`` and check it (:func:`load_file`, :func:`check`)
    against ``known_for(settings)``: the classes known once the file's settings, with the
    command line ``cli`` over them, have chosen their backends. Returns the file's
    settings; raises :class:`ConfigProblem`."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigProblem(f"{path}: cannot read it: {_one_line(str(e))}") from None
    config = load_file(path)
    merged = Config()
    merged.merge(config)
    merged.merge(cli or Config())
    check(config, known_for(merged), path, setting_lines(text))
    return config


def loopback_only(host: str) -> bool:
    """Whether every address ``host`` stands for is a loopback one (``""`` and
    ``0.0.0.0`` mean every interface; a name that does not resolve counts as exposed).
    The app refuses auth mode none anywhere else unless told to."""
    if not host:
        return False
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).partition("%")[0]).is_loopback for info in infos
    )


def _check_value(section: str, trait: TraitType[Any, Any], value: Any) -> str | None:
    """Why ``value`` is not valid for ``trait`` of class ``section`` (None when it is, or
    cannot be told before the configurable exists: lazy ``.append()`` values, checks
    that need the instance). Validated against a stand-in named like the class, so the
    message reads like traitlets' own and container elements are checked too."""
    if isinstance(value, LazyConfigValue):
        return None
    stand_in = type(section, (), {"_cross_validation_lock": True})()
    try:
        if isinstance(value, DeferredConfig):
            value = value.get_value(trait)
        validate = getattr(trait, "validate", None)  # what every trait type but Any has
        if validate is not None and not (value is None and trait.allow_none):
            validate(stand_in, value)
    except (TraitError, ValueError) as e:
        return _one_line(str(e))
    except Exception:  # a trait that needs its real instance to validate: checked when built
        return None
    return None


def check(
    config: Config,
    known: KnownClasses,
    source: str,
    lines: dict[tuple[str, ...], int] | None = None,
) -> None:
    """Raise :class:`ConfigProblem` for the first unknown class, unknown trait or invalid
    value in ``config`` (by line in the file ``source``, with ``lines`` from
    :func:`setting_lines`; ``lines=None`` for the command line, where settings are shown
    as ``--Class.trait``)."""
    cli = lines is None
    lines = lines or {}
    problems: list[tuple[float, str]] = []

    def add(key: tuple[str, ...], text: str) -> None:
        line = lines.get(key) or lines.get(key[:1])
        where = source if cli or line is None else f"{source}, line {line}"
        problems.append((line or float("inf"), f"{where}: {text}"))

    def shown(*names: str) -> str:
        return ("--" if cli else "c.") + ".".join(names)

    for section, values in config.items():
        if not isinstance(values, Config):
            text = f"unknown option --{section}" if cli else f"c.{section} is not a setting"
            add((section,), f"{text}: use {shown('Class', 'trait')}")
            continue
        if section in known.unchecked:
            continue
        if section not in known.classes:
            near = _nearest(section, known.classes)
            hint = f"; did you mean {near}?" if near else "; see phoebe-spawner --help-all"
            first = next(iter(values), "")
            text = f"unknown configurable class {section} (in {shown(section, first)}){hint}"
            add((section,), text)
            continue
        traits = known.traits(section)
        for name, value in values.items():
            if name not in traits:
                near = _nearest(name, traits)
                hint = f"; did you mean {shown(section, near)}?" if near else ""
                add((section, name), f"unknown setting {shown(section, name)}{hint}")
                continue
            why = _check_value(section, traits[name], value)
            if why:
                add((section, name), f"bad value for {shown(section, name)}: {why}")
    if problems:
        problems.sort(key=lambda p: p[0])
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigProblem(problems[0][1] + more)
