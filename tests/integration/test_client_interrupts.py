"""Ctrl-C in the client library beyond the first interrupt of a job (docs/client.md,
"Stopping a computation"):

- a second Ctrl-C while the cancel is under way stops waiting for the confirmation:
  the ComputationCancelled then says so and names the job for ``cancel_job``;
- Ctrl-C during an ordinary command (not a job) only abandons the wait: the command
  finishes on the worker and the session stays usable.

Real SIGINTs to this process, handled by the main thread, against a hub on a thread.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from phoebe_spawner.client import ComputationCancelled, PhoebeClient, SSEEvent

from ..waiting import wait_for
from .hub_thread import ThreadedHub


def sigint_when(event: threading.Event, delay: float = 0.3) -> None:
    """Send this process SIGINT ``delay`` s after ``event`` is set (as Ctrl-C does)."""

    def fire() -> None:
        if event.wait(60):
            time.sleep(delay)
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=fire, daemon=True).start()


def test_a_second_ctrl_c_stops_waiting_for_the_cancel(tmp_path: Path) -> None:
    with ThreadedHub(tmp_path / "hub") as hub, PhoebeClient(hub.url) as client:
        client.ping()
        assert hub.app is not None
        jobs = hub.app.jobs
        # the hub holds the cancel until the test lets it go, so the second Ctrl-C
        # surely lands while the client waits for the confirmation
        cancelling, release = threading.Event(), threading.Event()
        cancel = jobs.cancel

        async def held_cancel(user: Any, job_id: str) -> Any:
            cancelling.set()
            while not release.is_set():
                await asyncio.sleep(0.02)
            return await cancel(user, job_id)

        jobs.cancel = held_cancel  # type: ignore[method-assign]
        started = threading.Event()

        def on_event(event: SSEEvent) -> None:
            if event.event == "started":
                started.set()

        sigint_when(started)
        sigint_when(cancelling)
        try:
            with pytest.raises(ComputationCancelled) as interrupted:
                client.run_job("sleep", seconds=60, callback=on_event, progress=False)
        finally:
            release.set()
        cancelled = interrupted.value
        job_id = cancelled.job_id
        assert cancelled.confirmed is False
        assert str(cancelled) == (
            f"interrupted again while cancelling sleep (job {job_id}); it may still be "
            f"running: cancel_job({job_id!r}) stops it"
        )
        # the client stopped waiting, the hub did not: the cancel still runs to its end
        wait_for(
            lambda: client.get_job(job_id)["status"] == "cancelled",
            "the job to be cancelled",
            timeout=30,
        )
        assert client.ping() == {"status": "ready"}  # the session survived
        assert client.run_job("echo", after="cancel", progress=False) == {"after": "cancel"}


def test_ctrl_c_during_a_plain_command_abandons_only_the_wait(tmp_path: Path) -> None:
    with ThreadedHub(tmp_path / "hub") as hub, PhoebeClient(hub.url) as client:
        client.set_value("kept", 42)
        sent = threading.Event()
        original = client._http.request

        def watched(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
            if method == "POST" and path.startswith("send/"):
                sent.set()
            return original(method, path, *args, **kwargs)

        client._http.request = watched  # type: ignore[method-assign]
        sigint_when(sent, delay=0.5)
        with pytest.raises(KeyboardInterrupt) as interrupted:
            client.send("sleep", seconds=3)
        assert type(interrupted.value) is KeyboardInterrupt  # no job, nothing cancelled
        assert client.list_jobs() == []
        sid = client.session_id
        assert sid is not None

        # the command runs to its end on the worker (the next one waits behind it)
        assert client.send("echo", after="interrupt") == {"after": "interrupt"}
        assert hub.app is not None
        store = hub.app.store

        def commands() -> list[dict[str, Any]]:
            hub.run(store.flush_commands())
            return list(hub.run(store.list_commands(sid)))

        wait_for(
            lambda: any(c["command"] == "sleep" for c in commands()),
            "the sleep command to be logged",
            timeout=10,
        )
        [sleep] = [c for c in commands() if c["command"] == "sleep"]
        assert sleep["success"] is True and sleep["error"] is None  # ran to its end
        assert client.get_value("kept") == 42
        assert client.ping() == {"status": "ready"}
