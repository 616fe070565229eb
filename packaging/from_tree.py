"""Builds a distribution whose package lives in this repository's tree, not beside it.

Called by ``packaging/client/setup.py`` and ``packaging/worker/setup.py`` (the
``phoebe-spawner-client`` and ``phoebe-kernel-worker`` distributions); the hub's own
distribution is the repository root's ``setup.cfg``. The source is never copied into
``packaging/``: the hub, the tests and the editable installs use the one tree.

setuptools takes packages from outside the project folder (``package_dir``) when it
builds a wheel or an editable install straight from the folder, which is what
``pip install ./packaging/client`` and ``.ci/setup`` do. An sdist cannot hold files
outside its own folder, so :class:`TreeSdist` puts the package (and this file, and the
version file) inside it, where a build from the unpacked sdist finds them.

All three distributions take their version from ``phoebe_spawner/_version.py``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from setuptools import setup
from setuptools.command.sdist import sdist

#: The one place the version of all three distributions is written.
VERSION_FILE = Path("phoebe_spawner", "_version.py")


def source_root(project: Path, package: str) -> Path:
    """Where ``package`` sits: beside setup.py in an unpacked sdist, else two folders up."""
    top = package.split(".")[0]
    return project if (project / top).is_dir() else project.parents[1]


def read_version(root: Path) -> str:
    """The ``__version__`` literal of :data:`VERSION_FILE` (read, never imported)."""
    text = (root / VERSION_FILE).read_text()
    found = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if found is None:
        raise RuntimeError(f'no __version__ = "..." line in {root / VERSION_FILE}')
    return found.group(1)


def packages_under(root: Path, package: str) -> list[str]:
    """``package`` and every subpackage of it (folders with an ``__init__.py``)."""
    top = root.joinpath(*package.split("."))
    folders = [top, *sorted(p for p in top.rglob("*") if p.is_dir())]
    return [".".join(f.relative_to(root).parts) for f in folders if (f / "__init__.py").is_file()]


def tree_setup(setup_py: str, package: str) -> None:
    """Run setuptools for ``package`` and its subpackages, the rest from pyproject.toml."""
    project = Path(setup_py).resolve().parent
    root = source_root(project, package)

    class TreeSdist(sdist):
        """An sdist that carries the package from the tree (and what builds it) inside."""

        def make_release_tree(self, base_dir: str, files: list[str]) -> None:
            inside = [f for f in files if _inside(project / f, project)]
            super().make_release_tree(base_dir, inside)
            carried = [(project / f).resolve() for f in files if f not in inside]
            for source in [*carried, root / VERSION_FILE]:
                self._carry(source, Path(base_dir, source.relative_to(root)))
            self._carry(Path(__file__).resolve(), Path(base_dir, "from_tree.py"))

        def _carry(self, source: Path, target: Path) -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            self.copy_file(str(source), str(target))

    setup(
        version=read_version(root),
        package_dir={"": os.path.relpath(root, project)},
        packages=packages_under(root, package),
        cmdclass={"sdist": TreeSdist},
        # the egg-info goes beside setup.py, not into the tree's root
        options={"egg_info": {"egg_base": "."}},
    )


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` resolves to somewhere inside ``folder``."""
    return path.resolve().is_relative_to(folder)
