"""phoebe-spawner as an *external* JupyterHub service, from the shipped config file.

A real JupyterHub loads ``share/phoebe_spawner/jupyterhub/jupyterhub_config_external.py``
(plus this test's ports, users and a test admin token), and phoebe-spawner runs on its
own, started with exactly the ``export`` lines that file's comments tell a site to set
(addresses filled in). Then the OAuth login, an API token and the admin scope the file
grants through its group all work through JupyterHub's proxy.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from ..waiting import WaitTimeout, wait_for
from .browser_flow import Browser
from .conftest import require_proxy
from .jupyterhub import ADMIN_TOKEN, PASSWORD, ROOT, TEST_FACTORY, JupyterHubProcess, free_port
from .test_jupyterhub import acall

pytestmark = pytest.mark.jupyterhub

EXTERNAL = ROOT / "share" / "phoebe_spawner" / "jupyterhub" / "jupyterhub_config_external.py"
SERVICE_TOKEN = "e2e-external-service-token-" + "0f" * 16


def documented_exports(hub_api_url: str) -> dict[str, str]:
    """The ``export`` lines of the file's comments, the hub's address filled in."""
    exports = {}
    for line in EXTERNAL.read_text().splitlines():
        match = re.match(r"#\s+export (\w+)=(\S*)", line)
        if match:
            exports[match.group(1)] = match.group(2)
    assert exports["JUPYTERHUB_API_TOKEN"] == "<the"  # "<the same token as ...>"
    exports["JUPYTERHUB_API_TOKEN"] = SERVICE_TOKEN
    assert exports["JUPYTERHUB_API_URL"].endswith("/hub/api")
    exports["JUPYTERHUB_API_URL"] = hub_api_url
    return exports


class ExternalJupyterHub(JupyterHubProcess):
    """JupyterHub with the external config; the service is started by :meth:`start`."""

    def __init__(self, workdir: Path, proxy: str) -> None:
        super().__init__(workdir, proxy)
        self.hub_port = free_port()
        self.service: subprocess.Popen[bytes] | None = None
        self.service_log = workdir / "service.log"

    def write_config(self) -> Path:
        config = self.workdir / "jupyterhub_config.py"
        config.write_text(
            EXTERNAL.read_text()
            + f"""

# --- the e2e test hub ---------------------------------------------------------------
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {self.port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {self.hub_port}
c.ConfigurableHTTPProxy.command = [{self.proxy!r}]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"
c.ConfigurableHTTPProxy.pid_file = {str(self.workdir / "proxy.pid")!r}
c.JupyterHub.db_url = "sqlite:///{self.workdir / "jupyterhub.sqlite"}"
c.JupyterHub.cookie_secret_file = {str(self.workdir / "cookie_secret")!r}
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {PASSWORD!r}
c.Authenticator.allowed_users = {{"alice", "bob", "carol"}}
c.Authenticator.admin_users = {{"root"}}
phoebe = next(s for s in c.JupyterHub.services if s["name"] == "phoebe")
phoebe["url"] = "http://127.0.0.1:{self.service_port}"
c.JupyterHub.services.append({{"name": "test-admin", "api_token": {ADMIN_TOKEN!r}}})
c.JupyterHub.load_roles.append(
    {{"name": "test-admin", "scopes": ["admin:users", "tokens"], "services": ["test-admin"]}}
)
c.JupyterHub.load_groups["phoebe-admins"]["users"].append("carol")
"""
        )
        return config

    def start(self, timeout: float = 60) -> None:
        config = self.write_config()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(config)],
                cwd=self.workdir,
                env={**os.environ, "PHOEBE_SERVICE_TOKEN": SERVICE_TOKEN},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        service_config = self.workdir / "phoebe_spawner_config.py"
        service_config.write_text(
            f"c.PhoebeSpawnerApp.data_dir = {str(self.workdir / 'phoebe-data')!r}\n"
            f"c.LocalProcessSpawner.worker_args = {TEST_FACTORY!r}\n"
            "c.HubAuthenticator.cache_max_age = 1\n"
        )
        exports = documented_exports(f"http://127.0.0.1:{self.hub_port}/hub/api")
        env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
        with self.service_log.open("wb") as log:
            self.service = subprocess.Popen(
                [
                    sys.executable, "-m", "phoebe_spawner", "--ip", "127.0.0.1",
                    "--port", str(self.service_port), "--config", str(service_config),
                ],
                cwd=self.workdir,
                env={**env, **exports},
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        processes = (("JupyterHub", self.proc), ("the service", self.service))

        def up() -> bool:
            for name, proc in processes:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited at start:\n{self.logs()}")
            return self._answers(f"{self.service_url}health")

        try:
            wait_for(up, "the external service", timeout=timeout, interval=0.2)
        except WaitTimeout:
            raise RuntimeError(f"the external service is not reachable:\n{self.logs()}") from None

    def logs(self) -> str:
        service = self.service_log.read_text(errors="replace") if self.service_log.exists() else ""
        return self.log_tail() + "\n--- service ---\n" + "\n".join(service.splitlines()[-40:])

    def stop(self, timeout: float = 20) -> psutil.Process | None:
        if self.service is not None and self.service.poll() is None:
            self.service.send_signal(signal.SIGTERM)
            try:
                self.service.wait(timeout)
            except subprocess.TimeoutExpired:
                self.service.kill()
                self.service.wait()
                raise RuntimeError("the external service did not stop on SIGTERM") from None
        return super().stop(timeout)


async def test_external_service_from_the_shipped_config(tmp_path):
    hub = ExternalJupyterHub(tmp_path, require_proxy())
    await asyncio.to_thread(hub.start)
    try:
        # the browser's OAuth login through JupyterHub lands on the service's user page
        alice = Browser()
        page = await asyncio.to_thread(alice.login, hub.service_url, "alice", PASSWORD)
        assert page.status == 200, page.body[:500]
        assert "Your sessions" in page.body and "alice" in page.body

        # an API token of a user (the "user" role the file defines gives the access scope)
        token = await asyncio.to_thread(hub.token_for, "alice")
        status, body = await acall(hub, "POST", "dash/start-session", token, {})
        assert status == 200, body
        sid = body["session_id"]
        status, reply = await acall(hub, "POST", f"send/{sid}", token, {"command": "ping"})
        assert status == 200 and reply["result"] == {"status": "ready"}

        # the admin scope, granted through the file's phoebe-admins group
        carol = await asyncio.to_thread(hub.token_for, "carol")
        status, listing = await acall(hub, "GET", "api/v1/admin/sessions", carol)
        assert status == 200 and [s["session_id"] for s in listing["sessions"]] == [sid]
        status, body = await acall(hub, "GET", "api/v1/admin/sessions", token)
        assert status == 403, body
        # a token without the access scope the file's roles give is refused
        bare = await asyncio.to_thread(hub.token_for, "bob", ["read:users:name!user"])
        status, body = await acall(hub, "GET", "dash/sessions", bare)
        assert status == 403 and "access:services!service=phoebe" in body["detail"]

        status, _ = await acall(hub, "POST", f"dash/end-session/{sid}", token)
        assert status == 200
    finally:
        await asyncio.to_thread(hub.stop)
