"""The hub and the worker share only the protocol: checked on the source of both packages.

Every module of ``phoebe_spawner`` is parsed (not imported) and every import in it is
read: top-level ones, those under ``if TYPE_CHECKING:``, those inside functions, and
``importlib.import_module``/``__import__`` calls with a literal name.  The hub may take
from :mod:`phoebe_kernel_worker` only :mod:`phoebe_kernel_worker.protocol` and its
submodules; the worker never imports :mod:`phoebe_spawner`; and the protocol itself
stays free of the worker's modules and of PHOEBE.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HUB = ROOT / "phoebe_spawner"
WORKER = ROOT / "phoebe_kernel_worker"
PROTOCOL = "phoebe_kernel_worker.protocol"


def module_name(path: Path) -> str:
    """The dotted name of a source file (``pkg/sub/__init__.py`` -> ``pkg.sub``)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(path: Path, source: str | None = None) -> Iterator[tuple[int, str]]:
    """``(line, dotted name)`` of everything ``path`` imports, wherever the import sits.

    ``from a import b`` yields ``a.b`` (``b`` may be a submodule); relative imports are
    resolved against the module's package.  ``source`` replaces the file's text.
    """
    text = path.read_text() if source is None else source
    tree = ast.parse(text, filename=str(path))
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}" if alias.name != "*" else base
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id == "__import__")
            )
        ):
            yield node.lineno, node.args[0].value


def in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(root: Path, forbidden: str, allowed: str | None = None) -> list[str]:
    """``file:line name`` of every import of ``forbidden`` (outside ``allowed``) under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for line, name in imported_names(path):
            if in_package(name, forbidden) and not (allowed and in_package(name, allowed)):
                found.append(f"{path.relative_to(ROOT)}:{line} {name}")
    return found


def test_the_checker_sees_every_kind_of_import() -> None:
    """Top-level, TYPE_CHECKING, in-function, relative and import_module imports are read."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "import phoebe_kernel_worker.worker\n"
        "from phoebe_kernel_worker import wall, protocol\n"
        "if TYPE_CHECKING:\n"
        "    from phoebe_kernel_worker.commands import PhoebeSession\n"
        "def f():\n"
        "    from phoebe_kernel_worker.protocol.exits import EXIT_NO_FREE_PORT\n"
        "    importlib.import_module('phoebe_kernel_worker.safety')\n"
        "from ..client import PhoebeClient\n"
    )
    probe = HUB / "spawners" / "probe.py"  # never written: the source is passed in
    names = sorted(name for _, name in imported_names(probe, source))
    assert names == [
        "phoebe_kernel_worker.commands.PhoebeSession",
        "phoebe_kernel_worker.protocol",
        "phoebe_kernel_worker.protocol.exits.EXIT_NO_FREE_PORT",
        "phoebe_kernel_worker.safety",
        "phoebe_kernel_worker.wall",
        "phoebe_kernel_worker.worker",
        "phoebe_spawner.client.PhoebeClient",
        "typing.TYPE_CHECKING",
    ]
    outside = [n for n in names if in_package(n, "phoebe_kernel_worker")]
    assert [n for n in outside if not in_package(n, PROTOCOL)] == [
        "phoebe_kernel_worker.commands.PhoebeSession",
        "phoebe_kernel_worker.safety",
        "phoebe_kernel_worker.wall",
        "phoebe_kernel_worker.worker",
    ]


def test_hub_imports_only_the_protocol_from_the_worker() -> None:
    found = violations(HUB, "phoebe_kernel_worker", allowed=PROTOCOL)
    assert found == [], (
        "the hub may import only phoebe_kernel_worker.protocol (and its submodules) from "
        "the worker; these lines import worker-only modules. While branch 'worker' stands "
        "alone this fails on the hub modules other helpers move (spawners/local.py, "
        "spawners/base.py, memory.py, limits.py): the lead applies the worker branch's "
        "import list to them at merge.\n" + "\n".join(found)
    )


def test_worker_never_imports_the_hub() -> None:
    assert violations(WORKER, "phoebe_spawner") == []


def test_protocol_imports_no_worker_module_and_no_phoebe() -> None:
    """The shared part stands alone: standard library, orjson, zmq's pure Z85 encoder, and
    zmq sockets in sockets.py only (so importing the package opens no sockets)."""
    allowed_third_party = {"orjson"}
    found = []
    for path in sorted((WORKER / "protocol").rglob("*.py")):
        for line, name in imported_names(path):
            top = name.split(".")[0]
            if in_package(name, "phoebe_kernel_worker"):
                ok = in_package(name, PROTOCOL)
            elif top == "zmq":
                ok = path.name == "sockets.py" or name == "zmq.utils.z85"
            else:
                ok = top in allowed_third_party or top in _stdlib() or top == "__future__"
            if not ok:
                found.append(f"{path.relative_to(ROOT)}:{line} {name}")
    assert found == []


def _stdlib() -> frozenset[str]:
    return frozenset(sys.stdlib_module_names)
