"""The three distributions built from this repository, and what each wheel carries.

- phoebe-spawner (the root's setup.cfg): the hub, with everything it needs at run time,
  neither the client nor the worker;
- phoebe-spawner-client (packaging/client) and phoebe-kernel-worker (packaging/worker):
  one package each, taken from the tree, built from the tree and from their sdists.

tests/integration/test_distributions.py installs them into fresh environments.
"""

from __future__ import annotations

import email
import email.message
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy
import pytest

import phoebe_spawner
from phoebe_spawner import _data

ROOT = Path(__file__).resolve().parents[2]


def test_share_dir_found_from_source_checkout():
    assert _data.share_dir() == ROOT / "share" / "phoebe_spawner"
    assert (_data.share_dir() / "examples" / "phoebe_spawner_config.py").is_file()


def test_share_dir_found_under_an_install_prefix(tmp_path, monkeypatch):
    installed = tmp_path / "share" / "phoebe_spawner" / "examples"
    installed.mkdir(parents=True)
    monkeypatch.setattr(
        _data, "candidates", lambda: [tmp_path / "nowhere", tmp_path / _data.SUBDIR]
    )
    assert _data.share_dir() == tmp_path / _data.SUBDIR


def build_wheel(project: Path, into: Path, *, sdist_first: bool = False) -> zipfile.ZipFile:
    """Build ``project``'s wheel with this venv's setuptools (no index asked); with
    ``sdist_first``, build its sdist, unpack it elsewhere and build the wheel from that
    (what ``python -m build`` does). setuptools builds in ``into``, not in the project's
    ``build/`` (where files of an older layout would end up in the wheel)."""
    config = into / "build.cfg"
    config.write_text(f"[build]\nbuild_base = {into / 'build'}\n")
    env = {**os.environ, "DIST_EXTRA_CONFIG": str(config)}
    if sdist_first:
        hook = "import setuptools.build_meta as b, sys; print(b.build_sdist(sys.argv[1]))"
        made = run([sys.executable, "-c", hook, str(into / "sdist")], cwd=project, env=env)
        (sdist,) = (into / "sdist").glob("*.tar.gz")
        assert sdist.name == made.split()[-1]
        with tarfile.open(sdist) as tar:
            tar.extractall(into / "unpacked", filter="data")
        (project,) = (into / "unpacked").iterdir()
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    run([*pip_wheel, "-q", "-w", str(into), str(project)], cwd=into, env=env)
    (wheel,) = into.glob("*.whl")
    return zipfile.ZipFile(wheel)


def run(argv: list[str], *, cwd: Path, env: dict[str, str]) -> str:
    """Run ``argv``; its stdout (it must succeed)."""
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def metadata(wheel: zipfile.ZipFile) -> email.message.Message:
    """The wheel's METADATA."""
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    return email.message_from_bytes(wheel.read(name))


def top_folders(wheel: zipfile.ZipFile) -> set[str]:
    """The package folders a wheel installs (its dist-info and data left out)."""
    return {
        n.rsplit("/", 1)[0]
        for n in wheel.namelist()
        if n.endswith(".py") and ".dist-info/" not in n and ".data/" not in n
    }


def test_hub_wheel_has_share_files_and_migrations_and_neither_client_nor_worker(tmp_path):
    wheel = build_wheel(ROOT, tmp_path)
    names = set(wheel.namelist())
    data = [n for n in names if ".data/data/share/phoebe_spawner/" in n]
    assert any(n.endswith("examples/phoebe_spawner_config.py") for n in data), sorted(names)
    for required in (
        "phoebe_spawner/alembic/env.py",
        "phoebe_spawner/alembic/script.py.mako",
        "phoebe_spawner/alembic/versions/0001_initial.py",
        "phoebe_spawner/spawners/local.py",
    ):
        assert required in names, required
    # the client and the worker are distributions of their own
    assert not [n for n in names if n.startswith(("phoebe_spawner/client/", "phoebe_kernel_"))]
    meta = metadata(wheel)
    assert meta["Name"] == "phoebe-spawner"
    assert meta["Version"] == phoebe_spawner.__version__
    requires = meta.get_all("Requires-Dist") or []
    assert "phoebe-kernel-worker" in requires
    assert 'phoebe-spawner-client[progress,units]; extra == "client"' in requires
    assert not [r for r in requires if r.startswith(("numpy", "phoebe>", "astropy"))], requires
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = wheel.read(entry_points).decode()
    assert "phoebe-spawner = phoebe_spawner.app:main" in text
    assert "local = phoebe_spawner.spawners.local:LocalProcessSpawner" in text


@pytest.mark.parametrize("sdist_first", [False, True], ids=["from the tree", "from its sdist"])
def test_client_wheel_holds_the_client_only_and_requires_numpy_and_orjson(tmp_path, sdist_first):
    wheel = build_wheel(ROOT / "packaging" / "client", tmp_path, sdist_first=sdist_first)
    folders = top_folders(wheel)
    assert "phoebe_spawner/client" in folders
    assert all(f.startswith("phoebe_spawner/client") for f in folders), folders
    # no phoebe_spawner/__init__.py: a namespace package when only the client is installed
    assert "phoebe_spawner/__init__.py" not in wheel.namelist()
    meta = metadata(wheel)
    assert (meta["Name"], meta["Version"]) == ("phoebe-spawner-client", phoebe_spawner.__version__)
    required = [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]
    assert sorted(required) == ["numpy>=1.26", "orjson>=3.10"]
    assert set(meta.get_all("Provides-Extra") or []) == {"progress", "units", "widgets", "all"}


@pytest.mark.parametrize("sdist_first", [False, True], ids=["from the tree", "from its sdist"])
def test_worker_wheel_holds_the_worker_only_and_none_of_the_hubs_requirements(
    tmp_path, sdist_first
):
    wheel = build_wheel(ROOT / "packaging" / "worker", tmp_path, sdist_first=sdist_first)
    names = set(wheel.namelist())
    assert {
        "phoebe_kernel_worker/__main__.py",
        "phoebe_kernel_worker/protocol/__init__.py",
        "phoebe_kernel_worker/protocol/sockets.py",
        "phoebe_kernel_worker/safety/patches.py",
    } <= names
    packaged = {n for n in names if n.endswith(".py")}
    in_tree = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "phoebe_kernel_worker").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert packaged == in_tree  # every module and subpackage, nothing else
    meta = metadata(wheel)
    assert (meta["Name"], meta["Version"]) == ("phoebe-kernel-worker", phoebe_spawner.__version__)
    required = {re.split(r"[<>=\[; ]", r)[0].lower() for r in meta.get_all("Requires-Dist") or []}
    assert required == {"phoebe", "astropy", "numpy", "pyzmq", "orjson", "psutil"}


def test_client_found_when_installed_apart_from_the_hub(tmp_path):
    """The hub's phoebe_spawner and the client's in two sys.path entries (say, the
    system's site-packages and the user's): the client is found beside the hub."""
    hub, client = tmp_path / "hub", tmp_path / "client"
    (hub / "phoebe_spawner").mkdir(parents=True)
    for name in ("__init__.py", "_version.py"):
        shutil.copy(ROOT / "phoebe_spawner" / name, hub / "phoebe_spawner" / name)
    shutil.copytree(
        ROOT / "phoebe_spawner" / "client",
        client / "phoebe_spawner" / "client",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    site_packages = Path(numpy.__file__).parent.parent  # numpy and orjson, no .pth files
    found = subprocess.run(
        [
            sys.executable,
            "-S",  # no site: neither this checkout's editable installs nor the tree
            "-c",
            "import phoebe_spawner, phoebe_spawner.client as c;"
            "print(phoebe_spawner.__file__); print(c.__file__); print(c.PhoebeClient.__name__)",
        ],
        env={"PYTHONPATH": os.pathsep.join(map(str, (hub, client, site_packages)))},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == [
        str(hub / "phoebe_spawner" / "__init__.py"),
        str(client / "phoebe_spawner" / "client" / "__init__.py"),
        "PhoebeClient",
    ]
