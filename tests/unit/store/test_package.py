"""The store is a leaf of the hub: its modules import nothing of phoebe_spawner outside it.

The session manager, job manager, handlers and CLI call the store; the store never
calls back into them.  Checked on the source (``ast``), imports under
``TYPE_CHECKING`` and inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import phoebe_spawner.store

STORE = Path(phoebe_spawner.store.__file__).parent


def _hub_imports(path: Path) -> set[str]:
    """Modules of phoebe_spawner that ``path`` (a module of the store) imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("phoebe_spawner"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["phoebe_spawner", "store"][: 3 - node.level]
                found.add(".".join([*base, *([node.module] if node.module else [])]))
            elif (node.module or "").startswith("phoebe_spawner"):
                found.add(node.module or "")
    return found


def test_store_imports_only_itself() -> None:
    modules = sorted(STORE.glob("*.py"))
    assert {p.stem for p in modules} >= {"facade", "engine", "schema", "orm", "batch"}
    outside = {
        p.name: sorted(m for m in _hub_imports(p) if not m.startswith("phoebe_spawner.store"))
        for p in modules
    }
    assert {name: mods for name, mods in outside.items() if mods} == {}


def test_public_names_come_from_the_package() -> None:
    assert sorted(phoebe_spawner.store.__all__) == [
        "DatabaseSchemaError",
        "DatabaseUnavailable",
        "Store",
        "make_engine",
        "schema_status",
        "upgrade_schema",
    ]
    for name in phoebe_spawner.store.__all__:
        assert getattr(phoebe_spawner.store, name).__module__.startswith("phoebe_spawner.store.")
