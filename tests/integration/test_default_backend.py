"""The hub as the README's quick start runs it: no ``--spawner``, so the default backend.

The default is ``local-forkserver``: sessions are forked from a template. When the
template cannot start (here: it fails to import PHOEBE) sessions start cold, and the
hub's log says so, and why, in exactly one warning line. Through the real command with
fast test sessions (the template loads the test factory).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import psutil

from phoebe_spawner.app import PhoebeSpawnerApp

from ..waiting import wait_for

TEST_WORKERS = (
    "c.LocalProcessSpawner.worker_args = "
    "['--session-factory', 'phoebe_kernel_worker.testing:test_session']\n"
)
NO_PHOEBE = "raise ImportError('No module named phoebe (template test)')"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=orjson.dumps(body), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


class Hub:
    """``phoebe-spawner`` in mode none with only ``config`` (no spawner named)."""

    def __init__(self, tmp_path: Path, config: str) -> None:
        (tmp_path / "config.py").write_text(config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "hub.log"
        argv = [
            *(sys.executable, "-m", "phoebe_spawner"),
            f"--port={self.port}",
            "--config=config.py",
            f"--data-dir={tmp_path / 'data'}",
        ]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(argv, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)

    def __enter__(self) -> Hub:
        def healthy() -> bool:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        wait_for(healthy, "the hub to answer /health", timeout=30, interval=0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            assert self.proc.wait(timeout=20) == 0, self.log.read_text()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def start(self) -> str:
        status, body = post(self.url + "/dash/start-session", {})
        assert status == 200, body
        sid: str = body["session_id"]
        return sid

    def whereami(self, sid: str) -> dict[str, Any]:
        status, reply = post(self.url + f"/send/{sid}", {"command": "whereami"})
        assert status == 200 and reply["success"] is True, reply
        where: dict[str, Any] = reply["result"]
        return where

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()


def test_the_default_backend_is_the_fork_server():
    trait = PhoebeSpawnerApp.class_traits()["spawner_class"]
    assert trait.default_value == "local-forkserver"


def test_sessions_are_forked_with_no_spawner_named(tmp_path):
    with Hub(tmp_path, TEST_WORKERS) as hub:
        sids = [hub.start() for _ in range(2)]
        templates = [
            p
            for p in psutil.Process(hub.proc.pid).children()
            if "phoebe_kernel_worker.forkserver" in " ".join(p.cmdline())
        ]
        assert len(templates) == 1, "one fork server, started by the hub"
        for sid in sids:
            where = hub.whereami(sid)
            assert where["ppid"] == templates[0].pid  # forked, not cold-started
        assert any("spawner ForkServerSpawner" in line for line in hub.lines())
        assert not any("cold-start" in line for line in hub.lines())


def test_a_template_without_phoebe_means_cold_starts_and_one_warning(tmp_path):
    config = (
        TEST_WORKERS
        + "import sys\n"
        + f"c.ForkServerSpawner.forkserver_cmd = [sys.executable, '-c', {NO_PHOEBE!r}]\n"
    )
    with Hub(tmp_path, config) as hub:
        sids = [hub.start() for _ in range(3)]
        for sid in sids:
            assert hub.whereami(sid)["ppid"] == hub.proc.pid  # a plain child of the hub
        lines = hub.lines()
    reason = "the fork server did not start: ImportError: No module named phoebe (template test)"
    warnings = [line for line in lines if "WARNING" in line or "ERROR" in line]
    assert len(warnings) == 1, lines
    assert "WARNING" in warnings[0]
    assert warnings[0].endswith(f"{reason}; sessions will cold-start (as with spawner 'local')")
    for sid in sids:  # each cold start is still named, below warning level
        line = f"fork server unavailable ({reason}): cold-starting session {sid}"
        assert sum(x.endswith(line) for x in lines) == 1, lines
