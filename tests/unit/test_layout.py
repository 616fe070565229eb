"""The packages' shape: no import cycle and no module over 600 lines.

Covers every module of ``phoebe_spawner/`` and ``phoebe_kernel_worker/``. Imports are read
with ``ast``, not by importing: every ``import`` statement counts, including those under
``if TYPE_CHECKING:`` and inside functions (a cycle hidden in a function is still a cycle a
reader has to follow). Relative imports are resolved, and ``from pkg import name`` where
``name`` is a submodule counts as importing that submodule (otherwise as importing ``pkg``).
Importing ``a.b.c`` is an edge to ``a.b.c`` only, not to the packages above it.

The packages are found where Python imports them from (every directory of a package split
over several distributions). The first tests check the analysis itself on small packages
written to ``tmp_path``, so the layout checks at the end cannot pass by seeing nothing.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 600


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` at ``where`` (``path:line``)."""

    source: str
    target: str
    where: str


Packages = Mapping[str, Iterable[Path]]  # package name -> the directories it is in


def installed(*names: str) -> dict[str, list[Path]]:
    """The directories Python imports each package from."""
    found = {}
    for name in names:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.submodule_search_locations, f"{name} is not importable"
        found[name] = [Path(p) for p in spec.submodule_search_locations]
    return found


PACKAGES = installed("phoebe_spawner", "phoebe_kernel_worker")


def shown(path: Path) -> str:
    """``path`` as a failure message names it (relative to the repository if inside)."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def modules_of(packages: Packages) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the packages."""
    found: dict[str, Path] = {}
    for package, directories in packages.items():
        for directory in directories:
            for path in sorted(directory.rglob("*.py")):
                parts = [package, *path.relative_to(directory).with_suffix("").parts]
                if parts[-1] == "__init__":
                    parts.pop()
                found[".".join(parts)] = path
    return found


def _base(module: str, path: Path, node: ast.ImportFrom) -> str | None:
    """The absolute package an ``ImportFrom`` names (its relative dots resolved)."""
    if not node.level:
        return node.module
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    parts = package.split(".")
    if node.level - 1 >= len(parts):
        return None  # climbs out of the tree: not one of ours
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def import_edges(packages: Packages) -> list[Edge]:
    """Every import from one of the packages' modules to another of them."""
    modules = modules_of(packages)
    edges: list[Edge] = []

    def owner(name: str) -> str | None:
        """``name`` if it is one of our modules, else the closest enclosing one of ours."""
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _base(module, path, node)
                if base is None:
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            else:
                continue
            where = f"{shown(path)}:{node.lineno}"
            for target in targets:
                resolved = owner(target)
                if resolved is not None and resolved != module:
                    edges.append(Edge(module, resolved, where))
    return edges


@dataclass(frozen=True)
class Cycle:
    """A group of modules that import each other, and one way round it."""

    members: list[str]  # the group, sorted
    edges: list[Edge]  # the shortest cycle through its first member, in order


def cycles(edges: Iterable[Edge]) -> list[Cycle]:
    """One :class:`Cycle` for each group of modules that import each other.

    Groups are the strongly connected components of the import graph (Tarjan's algorithm);
    within each, the shortest cycle through its first module (by name) is reported.
    """
    graph: dict[str, dict[str, Edge]] = {}
    for edge in edges:
        graph.setdefault(edge.source, {}).setdefault(edge.target, edge)
        graph.setdefault(edge.target, {})

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        # iterative Tarjan: (node, iterator over its successors)
        work = [(node, iter(sorted(graph[node])))]
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        while work:
            current, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[current] = min(low[current], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[current])
                if low[current] == index[current]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == current:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)

    found = []
    for component in sorted(components):
        members = set(component)
        start = component[0]
        # breadth-first: the shortest way from start back to itself inside the group
        previous: dict[str, Edge] = {}
        frontier = [start]
        while frontier and start not in previous:
            following = []
            for node in frontier:
                for nxt, edge in sorted(graph[node].items()):
                    if nxt in members and nxt not in previous:
                        previous[nxt] = edge
                        following.append(nxt)
            frontier = following
        path = [previous[start]]
        while path[0].source != start:
            path.insert(0, previous[path[0].source])
        found.append(Cycle(component, path))
    return found


def describe(cycle: Cycle) -> str:
    """The group, then ``a -> b -> a`` with where each import is, for a failure message."""
    chain = " -> ".join([cycle.edges[0].source] + [edge.target for edge in cycle.edges])
    steps = "\n".join(f"    {e.source} -> {e.target} ({e.where})" for e in cycle.edges)
    return (
        f"  {len(cycle.members)} modules import each other: {', '.join(cycle.members)}\n"
        f"  for example {chain}:\n{steps}"
    )


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


# --- the analysis itself ---------------------------------------------------------------


def test_type_checking_and_function_imports_count(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "import typing\nif typing.TYPE_CHECKING:\n    from pkg.b import B\n",
            "pkg/b.py": "def f():\n    import pkg.a\n",
        },
    )
    [cycle] = cycles(import_edges({"pkg": [tmp_path / "pkg"]}))
    assert cycle.members == ["pkg.a", "pkg.b"]
    where = [e.where.removeprefix(f"{tmp_path}/") for e in cycle.edges]
    assert [(e.source, e.target, w) for e, w in zip(cycle.edges, where, strict=True)] == [
        ("pkg.a", "pkg.b", "pkg/a.py:3"),
        ("pkg.b", "pkg.a", "pkg/b.py:2"),
    ]


def test_relative_imports_and_submodules_named_in_from_imports_resolve(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/sub/__init__.py": "from .inner import thing\n",
            "pkg/sub/inner.py": "from .. import top\n",
            "pkg/top.py": "from pkg import sub\nfrom pkg.sub import inner, thing\nimport os\n",
        },
    )
    edges = {(e.source, e.target) for e in import_edges({"pkg": [tmp_path / "pkg"]})}
    assert edges == {
        ("pkg.sub", "pkg.sub.inner"),
        ("pkg.sub.inner", "pkg.top"),  # `from .. import top`: the submodule, not pkg
        ("pkg.top", "pkg.sub"),  # `from pkg import sub`: the subpackage
        ("pkg.top", "pkg.sub.inner"),  # `inner` is a module
        # `thing` is a name in pkg/sub/__init__.py: the edge to pkg.sub is already there
    }
    [cycle] = cycles(import_edges({"pkg": [tmp_path / "pkg"]}))
    assert describe(cycle).splitlines()[:2] == [
        "  3 modules import each other: pkg.sub, pkg.sub.inner, pkg.top",
        "  for example pkg.sub -> pkg.sub.inner -> pkg.top -> pkg.sub:",
    ]


def test_a_tree_without_cycles_reports_none(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pkg/__init__.py": "from . import a, b\n",
            "pkg/a.py": "from .b import B\n",
            "pkg/b.py": "import json\nB = 1\n",
        },
    )
    assert len(import_edges({"pkg": [tmp_path / "pkg"]})) == 3
    assert cycles(import_edges({"pkg": [tmp_path / "pkg"]})) == []


# --- the packages ------------------------------------------------------------------------


def test_the_packages_have_modules_to_check() -> None:
    modules = modules_of(PACKAGES)
    assert {"phoebe_spawner.app", "phoebe_kernel_worker.worker"} <= set(modules)
    assert len(import_edges(PACKAGES)) > 50


def test_no_import_cycles() -> None:
    found = cycles(import_edges(PACKAGES))
    report = "\n".join(describe(cycle) for cycle in found)
    assert not found, f"import cycles among the packages' modules:\n{report}"


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_module_over_600_lines(package: str) -> None:
    too_long = {
        shown(path): n
        for path in modules_of({package: PACKAGES[package]}).values()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not too_long, f"modules over {MAX_LINES} lines: {too_long}"
