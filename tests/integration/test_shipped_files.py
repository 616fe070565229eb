"""Files shipped in share/phoebe_spawner that sites copy: loaded and used as they would be.

- ``slurm/batch_template.sh``: set as ``SlurmSpawner.batch_template`` the way its own
  header says, rendered by the spawner, checked by ``bash -n`` and by the rules sbatch
  reads ``#SBATCH`` lines with, then run as a real job on the private cluster;
- ``jupyterhub/jupyterhub_config_external.py``: loaded with traitlets' config-file
  loader, as JupyterHub loads its config file (``get_config`` provided), and checked
  against what the hub's side of phoebe-spawner needs. tests/e2e/
  test_jupyterhub_external.py runs it in a real JupyterHub.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config, PyFileConfigLoader

from phoebe_kernel_worker import protocol
from phoebe_spawner.auth.hub import HubAuthenticator
from phoebe_spawner.spawners.slurm import SlurmSpawner

from ..conftest import TEST_FACTORY
from ..waiting import async_wait_for
from .test_slurm import hub_config, in_queue, job_state

SHARE = Path(__file__).resolve().parents[2] / "share" / "phoebe_spawner"
BATCH_TEMPLATE = SHARE / "slurm" / "batch_template.sh"
EXTERNAL_CONFIG = SHARE / "jupyterhub" / "jupyterhub_config_external.py"


def sbatch_directives(script: str) -> list[str]:
    """The options sbatch takes from a script: ``#SBATCH`` lines before the first line
    that is neither blank nor a comment (sbatch ignores every one after it)."""
    options = []
    for line in script.splitlines()[1:]:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        if stripped.startswith("#SBATCH"):
            options.append(stripped.removeprefix("#SBATCH").strip())
    return options


def template_spawner(tmp_path: Path, **traits: Any) -> SlurmSpawner:
    spawner = SlurmSpawner(
        session_id="shipped",
        key=protocol.derive_session_key(b"shipped-secret", "shipped").decode(),
        session_dir=str(tmp_path / "session"),
        runtime_dir=str(tmp_path / "runtime"),
        worker_args=TEST_FACTORY,
        batch_template=BATCH_TEMPLATE.read_text(),  # as the template's header says
        **traits,
    )
    spawner.job_name = "phoebe-shipped"
    return spawner


def test_batch_template_renders_to_a_script_sbatch_reads_whole(tmp_path):
    prologue = tmp_path / "prologue.log"
    spawner = template_spawner(
        tmp_path,
        partition="debug",
        time_limit="1:00:00",
        cpu_limit=2.0,
        mem_limit="512M",
        extra_sbatch_options=["--constraint=avx2"],
        prologue=f"echo first >> {prologue}\necho second >> {prologue}",
    )
    script = spawner.batch_script()
    checked = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert checked.returncode == 0, checked.stderr
    assert "{{" not in script and "}}" not in script
    # every option reaches sbatch: none is hidden behind a line of the rendered script
    assert sbatch_directives(script) == [
        "--job-name=phoebe-shipped",
        f"--output={tmp_path / 'runtime'}/slurm-%j.out",
        f"--chdir={tmp_path / 'runtime'}",
        "--no-requeue",
        "--partition=debug",
        "--time=1:00:00",
        "--cpus-per-task=2",
        "--mem=512M",
        "--constraint=avx2",
    ]
    # the prologue runs once, after the header; the agent is the last command
    assert script.count(f"echo first >> {prologue}") == 1
    assert script.count(f"echo second >> {prologue}") == 1
    commands = [line for line in script.splitlines() if line and not line.startswith("#")]
    assert commands[-1].startswith("exec ")
    assert "-m phoebe_kernel_worker.node_agent " in commands[-1]


@pytest.mark.slurm
async def test_batch_template_runs_a_session_on_the_cluster(make_hub, slurm_cluster, tmp_path):
    prologue = tmp_path / "prologue.log"
    app, client = await make_hub(
        **hub_config(
            slurm_cluster,
            SlurmSpawner__batch_template=BATCH_TEMPLATE.read_text(),
            SlurmSpawner__prologue=f"echo ran >> {prologue}",
            SlurmSpawner__cpu_limit=1.0,
            SlurmSpawner__mem_limit="256M",
        )
    )
    resp = await client.post("/dash/start-session", {"project_name": "shipped template"})
    assert resp.status == 200, resp.body
    sid = resp.json()["session_id"]
    spawner = app.manager.sessions[sid].spawner
    job_id = spawner.job_id
    info = slurm_cluster.run("scontrol", "show", "job", "-o", job_id)
    assert f"JobName=phoebe-{sid} " in info
    assert "Requeue=0 " in info  # --no-requeue
    assert "NumCPUs=1 " in info and "MinMemoryNode=256M" in info
    assert f"WorkDir={spawner.runtime_dir} " in info
    assert (await client.send(sid, "ping")).json()["result"] == {"status": "ready"}
    env = (await client.send(sid, "env")).json()["result"]
    assert env["OMP_NUM_THREADS"] == "1"  # the CPUs Slurm gave the job
    assert prologue.read_text() == "ran\n"  # the site's prologue ran once
    assert (await client.post(f"/dash/end-session/{sid}")).status == 200
    await async_wait_for(lambda: not app.manager.active(), "the end to finish", timeout=60)
    assert not in_queue(slurm_cluster, job_id)
    assert job_state(slurm_cluster, job_id) == "COMPLETED"
    row = await app.store.get_session(sid)
    assert row is not None and row["status"] == "stopped"


def load_external_config(monkeypatch: pytest.MonkeyPatch, token: str) -> Config:
    """The file loaded as JupyterHub loads ``jupyterhub_config.py``."""
    monkeypatch.setenv("PHOEBE_SERVICE_TOKEN", token)
    loader = PyFileConfigLoader(EXTERNAL_CONFIG.name, path=str(EXTERNAL_CONFIG.parent))
    return loader.load_config()


def test_external_jupyterhub_config_defines_the_service_the_hub_needs(monkeypatch):
    token = "ab" * 32
    config = load_external_config(monkeypatch, token)
    hub = config.JupyterHub
    [service] = [s for s in hub.services if s["name"] == "phoebe"]
    # an external service: JupyterHub routes to it and never starts it
    assert "command" not in service
    assert service["url"].startswith("http://") and service["url"].rsplit(":", 1)[1] == "8890"
    assert service["api_token"] == token  # the same value the service gets
    assert service["oauth_no_confirm"] is True
    # the phoebe-spawner side: a service named "phoebe" checks this access scope, and
    # takes this custom scope (its default admin scope) as the admin right
    monkeypatch.delenv("JUPYTERHUB_OAUTH_ACCESS_SCOPES", raising=False)
    auth = HubAuthenticator(service_name="phoebe", api_token=token)
    [access] = auth.access_scopes
    assert access == "access:services!service=phoebe"
    assert set(auth.admin_scopes) <= set(service["oauth_client_allowed_scopes"])
    assert set(service["oauth_client_allowed_scopes"]) <= set(hub.custom_scopes)
    roles = {role["name"]: role for role in hub.load_roles}
    assert access in roles["user"]["scopes"]  # every user may use the service
    assert access in roles["server"]["scopes"]  # and so may a notebook's own token
    admin = roles["phoebe-admin"]
    assert set(auth.admin_scopes) <= set(admin["scopes"])
    assert admin["groups"] == ["phoebe-admins"] and "phoebe-admins" in hub.load_groups

    # without the token in the environment the file refuses to load, never a default
    monkeypatch.delenv("PHOEBE_SERVICE_TOKEN")
    loader = PyFileConfigLoader(EXTERNAL_CONFIG.name, path=str(EXTERNAL_CONFIG.parent))
    with pytest.raises(KeyError, match="PHOEBE_SERVICE_TOKEN"):
        loader.load_config()


def test_external_config_names_the_variables_the_service_reads(monkeypatch, tmp_path):
    """The export lines in the file's comments, given to phoebe-spawner, make a hub-mode
    app served under the service prefix (as docs/jupyterhub.md says)."""
    exports = {}
    for line in EXTERNAL_CONFIG.read_text().splitlines():
        words = line.lstrip("# ").split(None, 1)
        if words and words[0] == "export":
            name, _, value = words[1].partition("=")
            exports[name] = value.split("#", 1)[0].strip()
    assert set(exports) == {
        "JUPYTERHUB_SERVICE_NAME",
        "JUPYTERHUB_API_TOKEN",
        "JUPYTERHUB_API_URL",
        "JUPYTERHUB_SERVICE_PREFIX",
        "JUPYTERHUB_CLIENT_ID",
        "JUPYTERHUB_OAUTH_CALLBACK_URL",
        "JUPYTERHUB_HOST",
    }
    assert exports["JUPYTERHUB_SERVICE_NAME"] == "phoebe"
    assert exports["JUPYTERHUB_CLIENT_ID"] == "service-phoebe"
    assert exports["JUPYTERHUB_OAUTH_CALLBACK_URL"] == (
        exports["JUPYTERHUB_SERVICE_PREFIX"] + "oauth_callback"
    )
    config = load_external_config(monkeypatch, "cd" * 32)
    [service] = [s for s in config.JupyterHub.services if s["name"] == "phoebe"]
    assert exports["JUPYTERHUB_SERVICE_PREFIX"] == f"/services/{service['name']}/"


@pytest.mark.slurm
async def test_a_template_without_the_job_name_still_names_the_job(make_hub, slurm_cluster):
    """A site template that drops the ``--job-name`` line: the hub names the job on the
    sbatch command line, so the session starts (its re-adoption check still holds)."""
    template = "\n".join(
        line for line in BATCH_TEMPLATE.read_text().splitlines() if "--job-name" not in line
    )
    app, client = await make_hub(
        **hub_config(slurm_cluster, SlurmSpawner__batch_template=template + "\n")
    )
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 200, resp.body
    sid = resp.json()["session_id"]
    job_id = app.manager.sessions[sid].spawner.job_id
    info = slurm_cluster.run("scontrol", "show", "job", "-o", job_id)
    assert f"JobName=phoebe-{sid} " in info
    assert (await client.post(f"/dash/end-session/{sid}")).status == 200
    await async_wait_for(lambda: not app.manager.active(), "the end to finish", timeout=60)
    assert not in_queue(slurm_cluster, job_id)
