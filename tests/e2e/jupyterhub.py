"""A real JupyterHub (with configurable-http-proxy) running phoebe-spawner as a managed service.

Used by the e2e tests: :class:`JupyterHubProcess` writes a ``jupyterhub_config.py``
that is the shipped snippet (``share/phoebe_spawner/jupyterhub/jupyterhub_config.py``)
unchanged, followed by what a test hub needs (ports, users, a test token: nothing of
the phoebe service but its port), starts ``python -m jupyterhub`` (of this
environment, or of another one) in a temporary directory with the service's data dir
and config given as the snippet reads them, waits until the hub and the service answer
through the proxy, and stops everything at the end. :meth:`restart` stops and starts
the hub again with the same database, as an admin applying a config change does.

Users (DummyAuthenticator, password ``PASSWORD``): ``alice`` and ``bob`` (plain users),
``root`` (a hub admin) and ``carol`` (holds ``custom:phoebe:admin``). A ``test-admin``
service token creates API tokens for them and manages groups.
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

    def __init__(
        self,
        workdir: Path,
        proxy: str,
        *,
        phoebe_workers: bool = False,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        extra_config: str = "",
    ) -> None:
        self.workdir = workdir
        self.proxy = proxy
        self.phoebe_workers = phoebe_workers
        self.python = python  # the hub environment's Python (the service runs on it too)
        self.env = dict(os.environ if env is None else env)
        self.extra_config = extra_config  # a site's lines after the snippet (a recipe)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.service_url = f"{self.url}/services/phoebe/"
        self.service_port = free_port()
        self.hub_port = free_port()
        self.proxy_api_port = free_port()
        self.log_path = workdir / "jupyterhub.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> Path:
        """The shipped snippet, unchanged, then ``extra_config``, then what this test hub
        needs."""
        service_config = self.workdir / "phoebe_spawner_config.py"
        lines = [
            "c.PhoebeSpawnerApp.log_level = 'DEBUG'",
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
            + self.extra_config
            + f"""

# --- the e2e test hub ---------------------------------------------------------------
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {self.port}
c.JupyterHub.hub_port = {self.hub_port}
c.ConfigurableHTTPProxy.command = [{self.proxy!r}]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_api_port}"
c.ConfigurableHTTPProxy.pid_file = {str(self.workdir / "proxy.pid")!r}
c.JupyterHub.db_url = "sqlite:///{self.workdir / "jupyterhub.sqlite"}"
c.JupyterHub.cookie_secret_file = {str(self.workdir / "cookie_secret")!r}
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {PASSWORD!r}
c.Authenticator.allowed_users = {{"alice", "bob", "carol"}}
c.Authenticator.admin_users = {{"root"}}
c.JupyterHub.log_level = "INFO"
phoebe_service["url"] = "http://127.0.0.1:{self.service_port}"  # a free port, not 8890
c.JupyterHub.services.append({{"name": "test-admin", "api_token": {ADMIN_TOKEN!r}}})
c.JupyterHub.load_roles.extend([
    {{"name": "test-admin",
     "scopes": ["admin:users", "admin:groups", "tokens", "list:services", "read:services"],
     "services": ["test-admin"]}},
    {{"name": "phoebe-admin-carol", "scopes": ["custom:phoebe:admin"], "users": ["carol"]}},
])
"""
        )
        return config

    def start(self, timeout: float = 60) -> None:
        config = self.write_config()
        env = {
            **self.env,
            "PHOEBE_SPAWNER_DATA_DIR": str(self.workdir / "phoebe-data"),
            "PHOEBE_SPAWNER_CONFIG": str(self.workdir / "phoebe_spawner_config.py"),
        }
        with self.log_path.open("ab") as log:  # the hub keeps its own copy of the fd
            self.proc = subprocess.Popen(
                [self.python, "-m", "jupyterhub", "-f", str(config)],
                cwd=self.workdir,
                env=env,
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

    def restart(self, timeout: float = 60) -> psutil.Process | None:
        """Stop the hub (and with it the service) and start it again, as an admin applying
        a config change does; returns the service process that stopped."""
        stopped = self.stop()
        self.start(timeout)
        return stopped

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

    def workers(self) -> list[psutil.Process]:
        """The PHOEBE workers of the running service."""
        service = self.service_process()
        if service is None:
            return []
        # the fork server's template (the default backend's) is the service's own child
        # and runs phoebe_kernel_worker.forkserver; the workers are the processes it forks,
        # except its spares (named phoebe-spare until they take a request)
        return [
            p
            for p in service.children(recursive=True)
            if "phoebe_kernel_worker" in " ".join(p.cmdline())
            and not (p.ppid() == service.pid and "phoebe_kernel_worker.forkserver" in p.cmdline())
            and p.name() != "phoebe-spare"
        ]

    def end_every_session(self) -> None:
        """End every session through the admin API (the snippet keeps workers across a
        stop, so a test hub ends them before its last stop)."""
        admin = self.token_for("root")
        listing = self.api_service("GET", "api/v1/admin/sessions", admin)
        for session in listing["sessions"]:
            if session["status"] not in {"pending", "running"}:
                continue
            self.api_service("DELETE", f"api/v1/admin/sessions/{session['session_id']}", admin)

    def api_service(self, method: str, path: str, token: str) -> Any:
        """A call to the phoebe service through the proxy (blocking: fixtures only)."""
        req = urllib.request.Request(
            self.service_url + path, method=method, headers={"Authorization": f"token {token}"}
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

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

    def close(self, timeout: float = 20) -> None:
        """The last stop: end every session (their workers outlive a stop), then stop."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.end_every_session()
            finally:
                self.stop(timeout)
