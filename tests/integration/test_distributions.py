"""The client and the worker distributions, installed from this repository into fresh
virtual environments (``python -m venv``; pip as configured on the machine, its cache
included), as a notebook user or a worker image installs them.

- ``phoebe-spawner-client`` (packaging/client) brings numpy and orjson and nothing of
  the hub's, and its ``PhoebeClient`` drives a session on a running hub;
- ``phoebe-kernel-worker`` (packaging/worker) would install PHOEBE and the worker's
  libraries and nothing of the hub's (resolved by pip with ``--dry-run --report``: the
  real install is exercised by the worker image, tests/integration/test_dockerfile.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import phoebe_spawner

from ..waiting import async_wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Libraries only the hub needs: none may come with the client or the worker.
HUB_ONLY = {"tornado", "sqlalchemy", "traitlets", "pyjwt", "alembic", "argon2-cffi"}

CLIENT_SCRIPT = """
import sys, numpy as np, phoebe_spawner
from phoebe_spawner.client import PhoebeClient
from phoebe_spawner.client._base import client_version

assert phoebe_spawner.__file__ is None, phoebe_spawner.__file__  # a namespace package
with PhoebeClient(sys.argv[1]) as client:
    sid = client.start_session(project_name="from the client distribution")["session_id"]
    assert client.ping() == {"status": "ready"}
    assert client.set_value("times", np.linspace(0, 1, 5)) == {}
    times = client.get_value("times")
    assert isinstance(times, np.ndarray) and np.array_equal(times, np.linspace(0, 1, 5))
    assert client.end_session() == {"success": True}
print(sid, client_version())
"""


def fresh_env() -> dict[str, str]:
    """The environment for the fresh venvs: nothing points Python at this checkout."""
    return {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}


def make_venv(where: Path) -> Path:
    """A fresh virtual environment; its python."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=300)
    return where / "bin" / "python"


def pip(python: Path, *args: str, cwd: Path) -> None:
    """Run the venv's pip (it must succeed)."""
    done = subprocess.run(
        [str(python), "-m", "pip", *args],
        cwd=cwd,
        env=fresh_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


def installed(python: Path, cwd: Path) -> set[str]:
    """The (normalised) names of the distributions installed in the venv."""
    listing = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m, json;"
         "print(json.dumps([d.metadata['Name'] for d in m.distributions()]))"],
        cwd=cwd, env=fresh_env(), capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return {name.lower().replace("_", "-") for name in json.loads(listing.stdout)}


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with phoebe-spawner-client installed from packaging/client."""
    where = tmp_path_factory.mktemp("client-venv")
    python = make_venv(where / "venv")
    pip(python, "install", str(REPO_ROOT / "packaging" / "client"), cwd=where)
    return python


def test_client_distribution_installs_numpy_and_orjson_only(client_venv: Path) -> None:
    names = installed(client_venv, client_venv.parents[2])
    assert "phoebe-spawner-client" in names
    assert not names & HUB_ONLY, names & HUB_ONLY
    # what a venv has of its own (pip; setuptools with Python 3.11) and the two required
    assert names - {"pip", "setuptools"} == {"phoebe-spawner-client", "numpy", "orjson"}


async def test_client_distribution_drives_a_session_on_a_running_hub(
    client_venv: Path, make_hub: Any
) -> None:
    app, _ = await make_hub()
    url = f"http://127.0.0.1:{app.bound_port}"
    # a child process (the hub's event loop keeps running meanwhile), outside the tree
    proc = await asyncio.create_subprocess_exec(
        str(client_venv), "-c", CLIENT_SCRIPT, url,
        cwd=client_venv.parents[2], env=fresh_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    sid, version = out.decode().split()
    assert version == phoebe_spawner.__version__  # the one version, from the metadata
    row = await app.store.get_session(sid)
    assert row is not None and row["project_name"] == "from the client distribution"

    async def stopped() -> bool:  # end-session answers before the worker is gone
        row = await app.store.get_session(sid)
        return row is not None and row["status"] == "stopped"

    await async_wait_for(stopped, "the ended session to be recorded stopped")
    assert row["user_agent"] == f"phoebe-spawner-client/{phoebe_spawner.__version__}"


def test_worker_distribution_brings_phoebe_and_nothing_of_the_hubs(tmp_path: Path) -> None:
    python = make_venv(tmp_path / "venv")
    report = tmp_path / "report.json"
    worker = str(REPO_ROOT / "packaging" / "worker")
    pip(python, "install", "--dry-run", "--quiet", "--report", str(report), worker, cwd=tmp_path)
    names = {
        item["metadata"]["name"].lower().replace("_", "-")
        for item in json.loads(report.read_text())["install"]
    }
    wanted = {"phoebe-kernel-worker", "phoebe", "astropy", "numpy", "pyzmq", "orjson", "psutil"}
    assert wanted <= names, wanted - names
    assert not names & HUB_ONLY, names & HUB_ONLY
    assert "phoebe-spawner" not in names and "phoebe-spawner-client" not in names
