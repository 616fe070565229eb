"""The hub as the README's quick start runs it: no ``--spawner``, default limits.

The default is ``local-forkserver``: sessions are forked from a template. When the
template cannot start (here: it fails to import PHOEBE) sessions start cold, and the
hub's log says so, and why, in exactly one warning line. Through the real command with
fast test sessions (the template loads the test factory). In mode ``none`` a burst of
16 starts all succeed; with accounts the per-user start rate still answers 429.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import psutil

from phoebe_spawner.app import PhoebeSpawnerApp

from ..conftest import register
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


def test_a_parallel_fit_starts_16_sessions_at_once_in_mode_none(tmp_path):
    """Issue 15's script: 16 starts at once from one anonymous user, every limit at its
    default (start rate 30 a minute in bursts of 10, 4 sessions per user): all start,
    since in mode none only the capacity holds."""
    with Hub(tmp_path, TEST_WORKERS) as hub, ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: post(hub.url + "/dash/start-session", {}), range(16)))
        assert [status for status, _ in answers] == [200] * 16, answers
        assert len({body["session_id"] for _, body in answers}) == 16
        for _, body in answers:
            assert hub.whereami(body["session_id"])["pid"] > 0


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


async def test_with_accounts_the_start_rate_still_holds(make_hub):
    """The same burst from one jwt account: the default start rate (bursts of 10) lets
    10 through and answers the rest 429 with Retry-After, per user."""
    app, client = await make_hub(
        auth_mode="jwt",
        SessionManager__start_rate_per_minute=30.0,  # the defaults test hubs turn off
        SessionManager__max_sessions_per_user=16,
    )
    assert app.manager.start_burst == 10
    app.manager._start_limiter.clock = lambda: 1000.0  # no refill during the burst
    ada = await register(client, "ada@example.org")
    answers = await asyncio.gather(
        *(client.post("/dash/start-session", {}, token=ada) for _ in range(16))
    )
    assert sorted(r.status for r in answers) == [200] * 10 + [429] * 6
    for refused in (r for r in answers if r.status == 429):
        assert refused.detail.startswith("Too many session starts; try again in ")
        assert int(refused.headers["Retry-After"]) >= 1
    bob = await register(client, "bob@example.org")  # per user: another account starts
    assert (await client.post("/dash/start-session", {}, token=bob)).status == 200
