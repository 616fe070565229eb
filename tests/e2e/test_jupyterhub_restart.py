"""A student's notebook session survives a JupyterHub restart, deployed as docs/jupyterhub.md
says: two virtual environments built from this repository with ``python -m venv`` and
pip, as an administrator builds them.

- the hub's environment: phoebe-spawner with the ``hub`` extra (JupyterHub) and the
  worker distribution (PHOEBE); JupyterHub runs from it with the shipped snippet
  unchanged, so the service and its workers run on that Python;
- the notebook environment: only phoebe-spawner-client with its ``widgets`` extra, where
  a student's ``PhoebeClient()`` (configured from ``$JUPYTERHUB_API_TOKEN`` and
  ``$PHOEBE_SPAWNER_URL`` as in a notebook server) computes a light curve.

JupyterHub is then restarted while the student's process waits, and the same client
object must reach the same session, with its parameters and computed model intact.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ..integration.test_distributions import REPO_ROOT, fresh_env, make_venv, pip
from ..waiting import async_wait_for
from .conftest import require_proxy
from .jupyterhub import JupyterHubProcess

pytestmark = [pytest.mark.jupyterhub, pytest.mark.phoebe]

NOTEBOOK = """
import json, sys
import numpy as np
from phoebe_spawner.client import PhoebeClient

client = PhoebeClient()  # as in a notebook: the server's token and PHOEBE_SPAWNER_URL
session = client.start_session(project_name="before the restart")
client.set_value("incl@binary", 86.5)
client.add_dataset("lc", compute_times=np.linspace(0, 1, 21), dataset="lc01")
fluxes = client.run_compute(progress=False)["model"]["lc01"]["fluxes"]
print(json.dumps({"session_id": session["session_id"], "fluxes": fluxes.tolist()}), flush=True)
sys.stdin.readline()  # the test restarts JupyterHub meanwhile
after = client.get_value("fluxes@lc01@model")
incl = client.get_value("incl@binary")
print(json.dumps({
    "session_id": client.session_id,
    "fluxes": np.asarray(after).tolist(),
    "incl": float(getattr(incl, "value", incl)),
}), flush=True)
assert client.end_session() == {"success": True}
"""


def build(where: Path, *requirements: str) -> Path:
    """A fresh venv at ``where`` with ``requirements`` installed; its python. No
    byte-compiling at install: only what runs gets compiled, when it is imported."""
    python = make_venv(where / "venv")
    pip(python, "install", "--quiet", "--no-compile", *requirements, cwd=where)
    return python


@pytest.fixture(scope="module")
def environments(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The pythons of the hub's environment (phoebe-spawner[hub] and phoebe-kernel-worker)
    and of a notebook image's (phoebe-spawner-client[widgets] only), built side by side."""
    hub_dir = tmp_path_factory.mktemp("hub-env")
    notebook_dir = tmp_path_factory.mktemp("notebook-env")
    worker = str(REPO_ROOT / "packaging" / "worker")
    client = REPO_ROOT / "packaging" / "client"
    with ThreadPoolExecutor(2) as pool:
        hub = pool.submit(build, hub_dir, f"{REPO_ROOT}[hub]", worker)
        notebook = pool.submit(build, notebook_dir, f"{client}[widgets]")
        return hub.result(), notebook.result()


async def test_a_notebook_session_survives_a_jupyterhub_restart(
    environments: tuple[Path, Path], tmp_path: Path
) -> None:
    hub_python, notebook_python = environments
    env = fresh_env()
    hub = JupyterHubProcess(
        tmp_path, require_proxy(), phoebe_workers=True, python=str(hub_python), env=env
    )
    await asyncio.to_thread(hub.start)
    student: asyncio.subprocess.Process | None = None
    try:
        token = await asyncio.to_thread(hub.token_for, "alice")
        student = await asyncio.create_subprocess_exec(
            str(notebook_python), "-c", NOTEBOOK,
            cwd=tmp_path,
            env={**env, "JUPYTERHUB_API_TOKEN": token, "PHOEBE_SPAWNER_URL": hub.service_url},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        before = await read_line(student, hub)
        assert len(before["fluxes"]) == 21 and max(before["fluxes"]) > min(before["fluxes"])
        # the service runs it on the hub's env (a spare just forked is unnamed for a moment)
        [worker] = await async_wait_for(
            lambda: one if len(one := hub.workers()) == 1 else None, "the one worker"
        )
        assert worker.cmdline()[0].startswith(str(hub_python.parent))

        stopped = await asyncio.to_thread(hub.restart)
        assert stopped is not None and not stopped.is_running()
        assert worker.is_running()  # kept for the next start, which takes it back

        assert student.stdin is not None
        student.stdin.write(b"go\n")
        after = await read_line(student, hub)
        assert after["session_id"] == before["session_id"]
        assert after["fluxes"] == before["fluxes"] and after["incl"] == 86.5
        _, err = await student.communicate()
        assert student.returncode == 0, err.decode()[-3000:]
    finally:
        if student is not None and student.returncode is None:
            student.kill()
            await student.wait()
        await asyncio.to_thread(hub.close)


async def read_line(student: asyncio.subprocess.Process, hub: JupyterHubProcess) -> Any:
    """The student's next JSON line; its stderr and the hub's log if it ended instead."""
    assert student.stdout is not None
    line = await student.stdout.readline()
    if not line:
        _, err = await student.communicate()
        tail = err.decode()[-3000:]
        raise AssertionError(f"the notebook process ended:\n{tail}\n{hub.log_tail()}")
    return json.loads(line)
