"""The hub's half of the worker wall: read paths never reach the data directory, and
the data directory, database and secret are tightened (``phoebe_spawner.spawners.wall``)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from phoebe_spawner.spawners.wall import (
    harden_hub,
    read_paths,
    session_factories,
    split_around,
    sqlite_path,
)


def test_split_around_leaves_out_only_the_forbidden_branch(tmp_path: Path) -> None:
    for name in ("lib", "data/hub", "data/other", "src"):
        (tmp_path / name).mkdir(parents=True)
    pieces = split_around(str(tmp_path), str(tmp_path / "data" / "hub"))
    assert sorted(pieces) == [str(tmp_path / n) for n in ("data/other", "lib", "src")]
    assert split_around(str(tmp_path / "lib"), str(tmp_path / "data")) == [str(tmp_path / "lib")]
    assert split_around(str(tmp_path / "data"), str(tmp_path / "data")) == []


def test_read_paths_never_cover_the_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "share").mkdir()
    paths = read_paths(str(data), [str(tmp_path)], ["phoebe_kernel_worker.testing:x"])
    real = os.path.realpath(data)
    assert all(not (real + os.sep).startswith(p.rstrip(os.sep) + os.sep) for p in paths)
    assert os.path.realpath(tmp_path / "share") in paths
    assert "/usr" in paths and "/proc" in paths


def test_harden_hub_tightens_what_an_older_hub_left(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sessions").mkdir(parents=True)
    db, secret = data / "hub.sqlite", data / "secret"
    for f in (db, secret):
        f.write_text("x")
        f.chmod(0o644)
    data.chmod(0o755)
    (data / "sessions").chmod(0o755)
    old_umask = os.umask(0o022)
    try:
        assert harden_hub(str(data), [str(db), str(secret), None]) == []
        assert os.umask(0o077) == 0o077
    finally:
        os.umask(old_umask)
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in (data, data / "sessions", db, secret)}
    assert modes == {data: 0o700, data / "sessions": 0o700, db: 0o600, secret: 0o600}
    assert Path("/proc/self/status").read_text().count("\n") > 0  # still readable by itself


def test_the_sqlite_file_and_factories_are_found() -> None:
    assert sqlite_path("sqlite:////srv/hub/db.sqlite") == "/srv/hub/db.sqlite"
    assert sqlite_path("sqlite://") is None
    assert sqlite_path("postgresql://u@h/db") is None
    args = ["--log-level", "DEBUG", "--session-factory", "a.b:c", "--session-factory=d:e"]
    assert session_factories(args) == ["a.b:c", "d:e"]
