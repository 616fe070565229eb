"""A real JupyterHub (with configurable-http-proxy) running phoebe-spawner as a managed service.

Used by the e2e tests: :class:`JupyterHubProcess` writes a ``jupyterhub_config.py``
built on the example snippet in ``share/phoebe_spawner/jupyterhub``, starts
``python -m jupyterhub`` in a temporary directory, waits until the hub and the service
answer through the proxy, and stops everything at the end (the service must exit
with the hub).

Users (DummyAuthenticator, password ``PASSWORD``): ``alice`` and ``bob`` (plain users),
``root`` (a hub admin) and ``carol`` (holds ``custom:phoebe:admin``). A ``test-admin``
service token creates API tokens for them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from ..waiting import WaitTimeout, wait_for

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = ROOT / "share" / "phoebe_spawner" / "jupyterhub" / "jupyterhub_config.py"
PASSWORD = "e2e-password"
ADMIN_TOKEN = "e2e-admin-service-token-0123456789abcdef"
USERS = ("alice", "bob", "root", "carol")
TEST_FACTORY = ["--session-factory", "phoebe_kernel_worker.testing:test_session"]


def find_proxy() -> str | None:
    """configurable-http-proxy: installed by .ci/node-packages into .venv/node, or on PATH."""
    local = ROOT / ".venv" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
    return str(local) if local.exists() else shutil.which("configurable-http-proxy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class JupyterHubProcess:
    """One JupyterHub with the ``phoebe`` service; ``url`` is the proxy's public URL."""

    def __init__(self, workdir: Path, proxy: str, *, phoebe_workers: bool = False) -> None:
        self.workdir = workdir
        self.proxy = proxy
        self.phoebe_workers = phoebe_workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.service_url = f"{self.url}/services/phoebe/"
        self.service_port = free_port()
        self.log_path = workdir / "jupyterhub.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> Path:
        """The example snippet plus what this test hub needs (ports, users, test tokens)."""
        service_config = self.workdir / "phoebe_spawner_config.py"
        lines = [
            f"c.PhoebeSpawnerApp.data_dir = {str(self.workdir / 'phoebe-data')!r}",
            "c.SessionManager.start_rate_per_minute = 0",
            "c.SessionManager.memory_interval = 1.0",
            "c.SessionManager.poll_interval = 0.2",
            "c.HubAuthenticator.cache_max_age = 1",
        ]
        if not self.phoebe_workers:
            lines.append(f"c.LocalProcessSpawner.worker_args = {TEST_FACTORY!r}")
        service_config.write_text("\n".join(lines) + "\n")
        config = self.workdir / "jupyterhub_config.py"
        config.write_text(
            SNIPPET.read_text()
            + f"""

# --- the e2e test hub ---------------------------------------------------------------
import sys
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {self.port}
c.JupyterHub.hub_port = {free_port()}
c.ConfigurableHTTPProxy.command = [{self.proxy!r}]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"
c.ConfigurableHTTPProxy.pid_file = {str(self.workdir / "proxy.pid")!r}
c.JupyterHub.db_url = "sqlite:///{self.workdir / "jupyterhub.sqlite"}"
c.JupyterHub.cookie_secret_file = {str(self.workdir / "cookie_secret")!r}
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {PASSWORD!r}
c.Authenticator.allowed_users = {{"alice", "bob", "carol"}}
c.Authenticator.admin_users = {{"root"}}
c.JupyterHub.log_level = "INFO"
phoebe = next(s for s in c.JupyterHub.services if s["name"] == "phoebe")
phoebe["url"] = "http://127.0.0.1:{self.service_port}"
phoebe["command"] = [sys.executable, "-m", "phoebe_spawner", "--config",
                     {str(service_config)!r}, "--log-level", "DEBUG"]
phoebe["environment"] = {{"PYTHONPATH": {os.environ.get("PYTHONPATH", "")!r}}}
c.JupyterHub.services.append({{"name": "test-admin", "api_token": {ADMIN_TOKEN!r}}})
c.JupyterHub.load_roles.append(
    {{"name": "test-admin", "scopes": ["admin:users", "tokens", "list:services", "read:services"],
     "services": ["test-admin"]}}
)
for role in c.JupyterHub.load_roles:
    if role["name"] == "phoebe-admin":
        role["users"] = ["carol"]
"""
        )
        return config

    def start(self, timeout: float = 60) -> None:
        config = self.write_config()
        with self.log_path.open("wb") as log:  # the hub keeps its own copy of the fd
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(config)],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterHub exited at start:\n{self.log_tail()}")
            return self._answers(f"{self.service_url}health")

        try:
            wait_for(up, "the phoebe service behind JupyterHub", timeout=timeout, interval=0.2)
        except WaitTimeout:
            raise RuntimeError(
                f"JupyterHub or the phoebe service did not come up:\n{self.log_tail()}"
            ) from None

    def _answers(self, url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def service_process(self) -> psutil.Process | None:
        """The phoebe-spawner process JupyterHub started."""
        assert self.proc is not None
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if "phoebe_spawner" in " ".join(child.cmdline()):
                    return child
            except psutil.Error:
                continue
        return None

    def api(self, method: str, path: str, body: Any = None, token: str = ADMIN_TOKEN) -> Any:
        """A JupyterHub REST API call (blocking: for fixtures and set-up only)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.url}/hub/api{path}",
            data=data,
            method=method,
            headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def token_for(self, user: str, scopes: list[str] | None = None) -> str:
        """A new JupyterHub API token of ``user`` (with all their rights, or ``scopes``)."""
        body: dict[str, Any] = {"note": "e2e"}
        if scopes is not None:
            body["scopes"] = scopes
        return str(self.api("POST", f"/users/{user}/tokens", body)["token"])

    def stop(self, timeout: float = 20) -> psutil.Process | None:
        """SIGTERM the hub and wait, up to ``timeout`` s each, for it and then its phoebe
        service to exit (RuntimeError if one does not). Returns the service's process that
        exited, or None if the hub was not running or had no service."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        service = self.service_process()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise RuntimeError(
                f"JupyterHub did not stop in {timeout} s:\n{self.log_tail()}"
            ) from None
        if service is None:
            return None
        try:
            service.wait(timeout)
        except psutil.TimeoutExpired:
            service.kill()
            raise RuntimeError("the phoebe service outlived JupyterHub") from None
        except psutil.NoSuchProcess:
            pass
        return service
