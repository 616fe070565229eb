"""The built wheel carries everything the hub needs at run time."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

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


def test_wheel_contains_share_files_and_migrations(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("phoebe_spawner-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = [n for n in names if ".data/data/share/phoebe_spawner/" in n]
    assert any(n.endswith("examples/phoebe_spawner_config.py") for n in data), sorted(names)
    for required in (
        "phoebe_spawner/alembic/env.py",
        "phoebe_spawner/alembic/script.py.mako",
        "phoebe_spawner/alembic/versions/0001_initial.py",
        "phoebe_kernel_worker/__main__.py",
        "phoebe_kernel_worker/protocol/__init__.py",
        "phoebe_kernel_worker/protocol/sockets.py",
        "phoebe_kernel_worker/safety/patches.py",
    ):
        assert required in names, required
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "phoebe-spawner = phoebe_spawner.app:main" in text
    assert "local = phoebe_spawner.spawners.local:LocalProcessSpawner" in text
