"""The fork server's documented fallbacks (docs/performance.md, "Fallback"), through a real hub.

A fork server that does not answer within ``fork_timeout`` (stopped, or still starting),
a template that fails at start-up, and a dead fork server that is restarted on a later
start (at most every 30 s): each session is cold-started and the hub log says
``fork server unavailable (...): cold-starting session ...`` (a warning, or INFO when the
template's failure was already the one warning). Fast test sessions; the
template's failures are made by wrapping the real ``phoebe_kernel_worker.forkserver``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil

from phoebe_spawner.spawners.forkserver import ForkServer, ForkServerSpawner

from ..conftest import Client
from ..processes import spares_of
from ..waiting import async_wait_for

FORK = {"PhoebeSpawnerApp__spawner_class": "local-forkserver"}


def template_cmd(prepare_body: str) -> list[str]:
    """The real fork server, whose template runs ``prepare_body`` as the test factory's
    ``prepare`` (what PHOEBE's factory does at start-up: import it, build the bundle)."""
    script = (
        "import sys, time\n"
        "from phoebe_kernel_worker import forkserver, testing\n"
        "def prepare():\n"
        f"    {prepare_body}\n"
        "testing.test_session.prepare = prepare\n"
        "sys.exit(forkserver.main())\n"
    )
    return [sys.executable, "-c", script]


class Records(logging.Handler):
    """The hub log's messages (the app's logger does not propagate to caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []
        #: those of WARNING and up
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        if record.levelno >= logging.WARNING:
            self.warnings.append(record.getMessage())


@contextmanager
def hub_log(app: Any) -> Iterator[Records]:
    """Collect the hub's log lines, INFO and up, while the block runs."""
    records = Records()
    level = app.log.level
    app.log.setLevel(logging.INFO)
    app.log.addHandler(records)
    try:
        yield records
    finally:
        app.log.removeHandler(records)
        app.log.setLevel(level)


async def start(client: Client) -> str:
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 200, resp.body
    sid: str = resp.json()["session_id"]
    return sid


async def whereami(client: Client, sid: str) -> dict[str, Any]:
    resp = await client.send(sid, "whereami")
    assert resp.status == 200 and resp.json()["success"] is True, resp.body
    where: dict[str, Any] = resp.json()["result"]
    return where


def the_server(app: Any) -> ForkServer:
    server = app.manager.backend
    assert isinstance(server, ForkServer)
    return server


def cold_start_line(records: Records, sid: str) -> str:
    """The one documented fallback line for session ``sid``."""
    lines = [
        m
        for m in records.messages
        if m.startswith("fork server unavailable (") and m.endswith(f"cold-starting session {sid}")
    ]
    assert len(lines) == 1, records.messages
    return lines[0]


def assert_cold(app: Any, sid: str, where: dict[str, Any]) -> None:
    """A plain child of the hub (this process), with no fork-server connection."""
    assert where["ppid"] == os.getpid()
    spawner = app.manager.sessions[sid].spawner
    assert isinstance(spawner, ForkServerSpawner) and spawner.child is None


async def end(client: Client, *sids: str) -> None:
    for sid in sids:
        assert (await client.post(f"/dash/end-session/{sid}")).status == 200


async def test_a_fork_server_that_never_answers_means_a_cold_start(make_hub):
    app, client = await make_hub(**FORK, ForkServerSpawner__fork_timeout=0.5)
    server = the_server(app)
    await async_wait_for(lambda: server.ready, "the template to be ready", timeout=30)
    forked = await start(client)
    assert server.proc is not None
    template = psutil.Process(server.proc.pid)
    assert (await whereami(client, forked))["ppid"] == template.pid
    template.suspend()  # alive and listening, but it answers nothing
    try:
        with hub_log(app) as records:
            cold = await start(client)
    finally:
        template.resume()
    assert cold_start_line(records, cold) == (
        "fork server unavailable (the fork server did not answer within 0.5 s): "
        f"cold-starting session {cold}"
    )
    assert_cold(app, cold, await whereami(client, cold))
    # the late request is dropped: no second worker for that session appears under the
    # template (besides its spares), and the template (not dead, only slow) forks the next
    # session again
    forked_pid = (await whereami(client, forked))["pid"]

    def workers() -> list[int]:
        spares = {p.pid for p in spares_of(template.pid)}
        return [p.pid for p in template.children() if p.pid not in spares]

    await async_wait_for(
        lambda: workers() == [forked_pid],
        "the template to have only the forked worker",
        timeout=10,
    )
    again = await start(client)
    assert (await whereami(client, again))["ppid"] == template.pid
    assert server.proc.pid == template.pid  # never restarted: it was not dead
    await end(client, forked, cold, again)


async def test_a_template_still_starting_after_fork_timeout_means_a_cold_start(make_hub):
    app, client = await make_hub(
        **FORK,
        ForkServerSpawner__forkserver_cmd=template_cmd("time.sleep(120)"),
        ForkServerSpawner__fork_timeout=0.3,
    )
    with hub_log(app) as records:
        cold = await start(client)
    line = cold_start_line(records, cold)
    assert line == (
        f"fork server unavailable (the fork server is still starting): cold-starting session {cold}"
    )
    assert_cold(app, cold, await whereami(client, cold))
    assert the_server(app).error is None  # still starting, not failed
    await end(client, cold)


async def test_a_template_that_fails_at_start_up_means_cold_starts(make_hub):
    app, client = await make_hub(
        **FORK,
        ForkServerSpawner__forkserver_cmd=template_cmd(
            "raise ImportError('No module named phoebe (template test)')"
        ),
    )
    server = the_server(app)
    with hub_log(app) as records:
        await async_wait_for(
            lambda: server.error is not None, "the fork server's start error", timeout=20
        )
        first = await start(client)
        second = await start(client)
    reason = "the fork server did not start: ImportError: No module named phoebe (template test)"
    assert server.error == reason
    assert f"{reason}; sessions will cold-start (as with spawner 'local')" in records.warnings
    assert len(records.warnings) == 1, records.warnings  # the one warning: no repeat per session
    for sid in (first, second):
        assert cold_start_line(records, sid) == (
            f"fork server unavailable ({reason}): cold-starting session {sid}"
        )
        assert_cold(app, sid, await whereami(client, sid))
    # the template's traceback is in the fork server's log for the operator
    assert "ImportError: No module named phoebe" in server.log_path.read_text()
    # within 30 s of its start a failed template is not started again
    assert "restarting the fork server" not in records.messages
    assert server.proc is not None and server.proc.returncode is not None
    await end(client, first, second)


async def test_a_dead_fork_server_is_restarted_and_forks_again(make_hub):
    app, client = await make_hub(**FORK)
    survivor = await start(client)
    server = the_server(app)
    assert server.proc is not None
    old_pid = server.proc.pid
    os.kill(old_pid, signal.SIGKILL)
    await async_wait_for(lambda: not server.alive, "the fork server to exit", timeout=10)
    with hub_log(app) as records:
        soon = await start(client)  # within 30 s of its start: no restart yet
    assert cold_start_line(records, soon) == (
        f"fork server unavailable (the fork server exited with status -9): "
        f"cold-starting session {soon}"
    )
    assert "restarting the fork server" not in records.messages
    assert server.proc.pid == old_pid and not server.alive
    server._started_at = time.monotonic() - 31  # the documented 30 s have passed
    with hub_log(app) as records:
        trigger = await start(client)  # starts the restart, itself cold-started
        assert "restarting the fork server" in records.messages
        assert cold_start_line(records, trigger)
        await async_wait_for(lambda: server.alive, "the fork server to be restarted", timeout=20)
        assert server.proc.pid != old_pid
        later = await start(client)
    assert (await whereami(client, later))["ppid"] == server.proc.pid  # forked again
    later_spawner = app.manager.sessions[later].spawner
    assert isinstance(later_spawner, ForkServerSpawner) and later_spawner.child is not None
    assert not any(m.endswith(f"cold-starting session {later}") for m in records.messages)
    for sid in (soon, trigger):
        assert_cold(app, sid, await whereami(client, sid))
    await end(client, survivor, soon, trigger, later)
