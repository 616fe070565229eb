"""The client library against a real hub with real (light, fault-injecting) workers.

The hub runs on a background thread (:mod:`.hub_thread`) so these synchronous tests
drive :class:`PhoebeClient` from the main thread, which can receive a real SIGINT
while the client waits for a job, as a notebook kernel does.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from phoebe_spawner.client import (
    AuthenticationError,
    BadRequest,
    CommandTimeout,
    ComputationCancelled,
    ConfigurationError,
    Conflict,
    HubConnectionError,
    HubTimeout,
    JobCancelled,
    LimitReached,
    PermissionDeniedError,
    PhoebeClient,
    PhoebeClientError,
    PhoebeError,
    RateLimited,
    SessionNotFound,
    SSEEvent,
    WorkerUnavailable,
)

from ..waiting import wait_for
from .hub_thread import ThreadedHub

PASSWORD = "correct horse battery"


@pytest.fixture
def hub(tmp_path: Path) -> Any:
    with ThreadedHub(tmp_path / "hub") as h:
        yield h


@pytest.fixture
def make_threaded_hub(tmp_path: Path) -> Any:
    hubs: list[ThreadedHub] = []

    def factory(**kwargs: Any) -> ThreadedHub:
        h = ThreadedHub(tmp_path / f"hub{len(hubs)}", **kwargs).__enter__()
        hubs.append(h)
        return h

    yield factory
    for h in reversed(hubs):
        h.__exit__(None, None, None)


def test_sessions_and_commands(hub: ThreadedHub, tmp_path: Path) -> None:
    with PhoebeClient(hub.url) as client:
        assert client.auth_mode == "none" and client.session_id is None
        session = client.start_session({"ui_version": "1"}, project_name="Algol")
        sid = session["session_id"]
        assert client.session_id == sid and session["status"] == "running"
        listed = client.get_sessions()
        assert list(listed) == [sid] and listed[sid]["project_name"] == "Algol"
        assert client.ping() == {"status": "ready"}
        assert set(client.get_memory_usage()) == {sid}
        capacity = client.get_port_status()
        assert capacity["reserved_ports"] == 1 and capacity["available_ports"] >= 1

        assert client.set_value("times", np.linspace(0, 1, 5)) == {}
        times = client.get_value("times")
        assert isinstance(times, np.ndarray) and times.dtype == np.float64
        assert np.array_equal(times, np.linspace(0, 1, 5))
        client.set_value("grid", [[1, 2], [3, 4]])
        grid = client.get_value("grid")
        assert grid.dtype == np.int64 and grid.shape == (2, 2)
        client.set_value("gaps", [1.5, float("nan"), None])
        assert np.isnan(client.get_value("gaps")[1:]).all()
        client.set_value("names", ["lc01", "rv01"])
        assert client.get_value("names") == ["lc01", "rv01"]
        client.set_value(twig="flag", value=True)
        assert client.get_value(twig="flag") is True

        echoed = client.send("echo", n=np.int64(3), x=np.float32(0.5), t=(1, 2), a=np.arange(3))
        assert echoed == {"n": 3, "x": 0.5, "t": [1, 2], "a": [0, 1, 2]}

        bundle = client.get_bundle()
        path = tmp_path / "saved.json"
        path.write_text(bundle["bundle"])
        client.set_value("flag", False)
        assert client.load_bundle(path) == {}
        assert client.get_value("flag") is True
        client.set_value("flag", False)
        client.load_bundle(bundle)
        assert client.get_value("flag") is True

        assert client.end_session() == {"success": True}
        assert client.session_id is None
        # listed "stopping" until the worker is gone (end_session does not wait for that)
        wait_for(lambda: client.get_sessions() == {}, "the ended session to leave the list")


def test_context_manager_ends_only_its_own_sessions(hub: ThreadedHub) -> None:
    other = hub.http("POST", "dash/start-session", {"project_name": "other"})["session_id"]
    with PhoebeClient(hub.url) as client:
        client.set_value("x", 1)  # auto_session: the first command starts a session
        mine = client.session_id
        assert mine and mine != other
        assert client.get_value("x", session_id=mine) == 1
    wait_for(lambda: set(hub.http("GET", "dash/sessions")) == {other}, "only the other listed")

    with PhoebeClient(hub.url, keep_sessions=True) as client:
        kept = client.start_session()["session_id"]
    with PhoebeClient(hub.url, session_id=kept, auto_session=False) as client:
        assert client.ping() == {"status": "ready"}
    assert set(hub.http("GET", "dash/sessions")) == {other, kept}

    client = PhoebeClient(hub.url, auto_session=False)
    with pytest.raises(PhoebeClientError, match="no current session"):
        client.ping()
    client.set_session_id(other)
    client.close_session()
    client.end_session(kept)
    wait_for(lambda: hub.http("GET", "dash/sessions") == {}, "both ended sessions to go")
    client.close()


def test_typed_errors_carry_the_hub_detail(make_threaded_hub: Any) -> None:
    hub = make_threaded_hub(
        auth_mode="jwt",
        SessionManager__max_sessions_per_user=1,
        SessionManager__command_timeouts={"ping": 30.0, "sleep": 0.5},
    )
    token = hub.register("ada@example.org", PASSWORD)
    with PhoebeClient(hub.url, token=token) as client:
        with pytest.raises(SessionNotFound) as not_found:
            client.ping(session_id="no-such-session")
        assert not_found.value.status == 404 and "no-such-session" in str(not_found.value)
        sid = client.start_session()["session_id"]

        with pytest.raises(PhoebeError) as phoebe_error:
            client.get_value("missing")
        assert phoebe_error.value.command == "get_value"
        assert "no parameter 'missing'" in phoebe_error.value.error

        with pytest.raises(LimitReached) as limit:
            client.start_session()
        assert not isinstance(limit.value, RateLimited) and limit.value.status == 429
        assert "at most 1 per user" in limit.value.detail and client.session_id == sid

        with pytest.raises(BadRequest, match="Unknown job status bogus"):
            client.list_jobs(status="bogus")

        with pytest.raises(CommandTimeout) as timeout:
            client.send("sleep", seconds=20)
        assert timeout.value.status == 504  # the hub's timeout, not the end of the sleep
        assert client.ping() == {"status": "ready"}  # the session survived

        job = client.submit_job("echo", x=1)
        assert client.wait_job(job["job_id"], progress=False) == {"x": 1}
        assert client.job_result(job["job_id"]) == {"success": True, "result": {"x": 1}}
        assert client.get_job(job["job_id"])["status"] == "succeeded"
        with pytest.raises(Conflict, match="already succeeded"):
            client.cancel_job(job["job_id"])

        with pytest.raises(WorkerUnavailable) as dead:
            client.send("crash")
        assert dead.value.status == 503
        with pytest.raises(WorkerUnavailable):
            client.ping()


def test_rate_limit_has_retry_after(make_threaded_hub: Any) -> None:
    hub = make_threaded_hub(
        auth_mode="jwt", SessionManager__start_rate_per_minute=1.0, SessionManager__start_burst=1
    )
    token = hub.register("ada@example.org", PASSWORD)
    with PhoebeClient(hub.url, token=token) as client:
        client.start_session()
        with pytest.raises(RateLimited) as limited:
            client.start_session()
        assert isinstance(limited.value, LimitReached)
        assert limited.value.retry_after is not None and limited.value.retry_after >= 1
        assert "try again" in limited.value.detail


def test_client_side_timeouts_and_unreachable_hub(hub: ThreadedHub) -> None:
    with PhoebeClient(hub.url, command_timeout=0.3) as client:
        client.start_session()
        with pytest.raises(HubTimeout) as slow:
            client.send("sleep", seconds=1.5)
        assert slow.value.may_have_run and isinstance(slow.value, TimeoutError)
        assert client.ping() == {"status": "ready"}  # a fresh connection after the timeout

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(HubConnectionError) as unreachable:
        PhoebeClient(f"http://127.0.0.1:{port}")
    assert isinstance(unreachable.value, ConnectionError)
    assert f"127.0.0.1:{port}" in str(unreachable.value)


def test_jwt_login_tokens_and_ownership(make_threaded_hub: Any) -> None:
    hub = make_threaded_hub(auth_mode="jwt")
    alice_token = hub.register("alice@example.org", PASSWORD)
    hub.register("bob@example.org", PASSWORD)

    with pytest.raises(AuthenticationError, match="auth mode 'jwt'"):
        PhoebeClient(hub.url)
    with pytest.raises(AuthenticationError) as wrong:
        PhoebeClient(hub.url, email="alice@example.org", password="not the password")
    assert wrong.value.status == 401 and "not the password" not in str(wrong.value)

    bob = PhoebeClient(hub.url, email="bob@example.org", password=PASSWORD)
    assert bob.user is not None and bob.user["email"] == "bob@example.org"
    with PhoebeClient(hub.url, token=alice_token) as alice:
        sid = alice.start_session()["session_id"]
        with pytest.raises(PermissionDeniedError) as denied:
            bob.set_value("x", 1, session_id=sid)
        assert denied.value.status == 403
        assert alice_token not in repr(alice) and alice_token not in repr(denied.value)
        assert bob.get_sessions() == {}
    bob.close()

    expired = PhoebeClient(hub.url, token="not-a-jwt")
    with pytest.raises(AuthenticationError) as bad:
        expired.get_sessions()
    assert bad.value.status == 401 and "not-a-jwt" not in str(bad.value)
    expired.close()


def test_zero_argument_configuration_from_the_environment(
    make_threaded_hub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith(("JUPYTERHUB_", "PHOEBE_SPAWNER_")):
            monkeypatch.delenv(name)
    with pytest.raises(ConfigurationError, match="PHOEBE_SPAWNER_URL"):
        PhoebeClient()

    hub = make_threaded_hub(PhoebeSpawnerApp__base_url="/services/phoebe/")
    port = hub.app.bound_port
    # what a JupyterHub single-user server has: its token and the hub's public URL
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hub-token-123")
    monkeypatch.setenv("JUPYTERHUB_PUBLIC_HUB_URL", f"http://127.0.0.1:{port}/hub/")
    with PhoebeClient() as client:
        assert client.url == f"http://127.0.0.1:{port}/services/phoebe/"
        assert client._http.headers["Authorization"] == "token hub-token-123"
        assert "hub-token-123" not in repr(client)
        assert client.ping() == {"status": "ready"}

    monkeypatch.delenv("JUPYTERHUB_PUBLIC_HUB_URL")
    monkeypatch.setenv("JUPYTERHUB_PUBLIC_URL", f"http://127.0.0.1:{port}/user/ada/")
    monkeypatch.setenv("JUPYTERHUB_BASE_URL", "/")
    with PhoebeClient() as client:
        assert client.ping() == {"status": "ready"}

    monkeypatch.setenv("PHOEBE_SPAWNER_URL", hub.url)  # the explicit setting wins
    monkeypatch.setenv("PHOEBE_SPAWNER_SERVICE_NAME", "elsewhere")
    with PhoebeClient() as client:
        assert client.url == hub.url
        # the sessions the clients above ended are listed until their workers are gone
        wait_for(lambda: client.get_sessions() == {}, "the ended sessions to leave the list")


def test_progress_bar_and_callback_see_the_workers_progress(
    hub: ThreadedHub, capsys: pytest.CaptureFixture[str]
) -> None:
    events: list[SSEEvent] = []
    with PhoebeClient(hub.url) as client:
        result = client.run_job("steps", n=20, delay=0.02, callback=events.append, show_output=True)
        assert result == {"steps": 20}
        ids = [e.id for e in events]
        assert ids == list(range(1, len(ids) + 1))
        kinds = [e.event for e in events]
        assert kinds[:2] == ["queued", "started"] and kinds[-1] == "succeeded"
        fractions = [e.data["fraction"] for e in events if e.event == "progress"]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) >= 2
        out, err = capsys.readouterr()
        assert "stepping: 100%" in err and "succeeded" in err  # the tqdm bar
        assert [line for line in out.splitlines() if line.startswith("step ")] == [
            f"step {i} of 20" for i in range(1, 21)
        ]

        client.run_job("steps", n=3, delay=0, progress=False)
        out, err = capsys.readouterr()
        assert out == "" and err == ""


def _interrupt_main_soon(delay: float) -> None:
    """A real SIGINT to this process (the main thread handles it), as Ctrl-C sends."""
    timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
    timer.daemon = True
    timer.start()


def test_sigint_cancels_the_job_and_keeps_the_session(hub: ThreadedHub) -> None:
    assert threading.current_thread() is threading.main_thread()
    with PhoebeClient(hub.url) as client:
        client.set_value("kept", 42)
        started: list[str] = []

        def on_event(event: SSEEvent) -> None:
            if event.event == "started":
                started.append(event.data["command"])
                _interrupt_main_soon(0.3)

        with pytest.raises(KeyboardInterrupt) as interrupted:
            client.run_job("sleep", seconds=60, callback=on_event, progress=False)
        assert started == ["sleep"]
        cancelled = interrupted.value
        assert isinstance(cancelled, ComputationCancelled) and cancelled.confirmed
        assert client.get_job(cancelled.job_id)["status"] == "cancelled"
        assert client.ping() == {"status": "ready"}
        assert client.get_value("kept") == 42
        assert client.run_job("echo", after="cancel", progress=False) == {"after": "cancel"}


def test_keyboard_interrupt_from_the_callback_cancels(hub: ThreadedHub) -> None:
    with PhoebeClient(hub.url) as client:

        def stop_at_first_progress(event: SSEEvent) -> None:
            if event.event == "progress":
                raise KeyboardInterrupt

        with pytest.raises(ComputationCancelled) as cancelled:
            client.run_job("steps", n=200, delay=0.05, callback=stop_at_first_progress)
        job = client.get_job(cancelled.value.job_id)
        assert job["status"] == "cancelled" and job["progress"] < 0.5

        def broken(event: SSEEvent) -> None:
            if event.event == "started":
                raise ValueError("a bug in the callback")

        with pytest.raises(ValueError, match="a bug in the callback"):
            client.run_job("sleep", seconds=60, callback=broken, progress=False)
        [last] = client.list_jobs(limit=1)
        assert last["command"] == "sleep" and last["status"] == "cancelled"
        assert client.ping() == {"status": "ready"}


def test_job_cancelled_elsewhere_and_failed_jobs(hub: ThreadedHub) -> None:
    with PhoebeClient(hub.url) as client:

        def cancel_from_elsewhere(event: SSEEvent) -> None:
            if event.event == "started":
                job_id = client.list_jobs(limit=1)[0]["job_id"]
                threading.Thread(
                    target=hub.http, args=("POST", f"api/v1/jobs/{job_id}/cancel")
                ).start()

        with pytest.raises(JobCancelled) as other:
            client.run_job("sleep", seconds=60, callback=cancel_from_elsewhere, progress=False)
        assert client.get_job(other.value.job_id)["status"] == "cancelled"

        with pytest.raises(PhoebeError) as failed:
            client.run_job("steps", n=2, delay=0, fail=True, progress=False)
        assert failed.value.command == "steps" and "failed after 2 steps" in failed.value.error


def test_a_dropped_event_stream_resumes_without_gap_or_duplicate(hub: ThreadedHub) -> None:
    events: list[SSEEvent] = []
    with PhoebeClient(hub.url) as client:
        client.start_session()
        opened = client.connections_opened

        def drop_once(event: SSEEvent) -> None:
            events.append(event)
            if event.id == 4:
                stream = client.jobs.stream
                assert stream is not None and stream.socket is not None
                stream.socket.shutdown(socket.SHUT_RDWR)

        assert client.run_job("steps", n=15, delay=0.02, callback=drop_once) == {"steps": 15}
        ids = [e.id for e in events]
        assert ids == list(range(1, len(ids) + 1)) and events[-1].event == "succeeded"
        assert client.connections_opened == opened + 2  # the stream, then its resumption


def _client_ports(hub_port: int) -> set[int]:
    return {
        c.laddr.port
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == hub_port and c.status == psutil.CONN_ESTABLISHED
    }


def test_one_kept_alive_connection_for_many_calls(make_threaded_hub: Any) -> None:
    hub = make_threaded_hub(PhoebeSpawnerApp__idle_connection_timeout=1)
    port = hub.app.bound_port
    with PhoebeClient(hub.url) as client:
        client.start_session()
        seen: set[int] = set()
        for i in range(300):
            client.set_value("i", i) if i % 2 else client.get_value("i") if i else client.ping()
            if i % 50 == 0:
                seen |= _client_ports(port)
        assert client.connections_opened == 1 and len(seen) == 1

        # the hub closes the idle connection; the next command (not idempotent) goes on
        # a new one, found dropped before anything was sent
        conn = client._http._conn
        assert conn is not None
        wait_for(
            lambda: client._http._dropped(conn), "the idle connection to be dropped", timeout=10
        )
        assert client.set_value("after_idle", 1) == {}
        assert client.get_value("after_idle") == 1
        assert client.connections_opened == 2


def test_checkpoints_and_starting_from_one(hub: ThreadedHub) -> None:
    with PhoebeClient(hub.url) as client:
        first = client.start_session(project_name="saved")["session_id"]
        client.set_value("period", 2.5)
        cp = client.checkpoint("before the fit")
        assert cp["name"] == "before the fit" and cp["session_id"] == first
        assert [c["checkpoint_id"] for c in client.list_checkpoints()] == [cp["checkpoint_id"]]
        assert '"period": 2.5' in client.get_checkpoint_bundle(cp["checkpoint_id"])
        restored = client.start_session(checkpoint_id=cp["checkpoint_id"])
        assert restored["project_name"] == "saved" and client.session_id != first
        assert client.get_value("period") == 2.5
        client.delete_checkpoint(cp["checkpoint_id"])
        assert client.list_checkpoints() == []
        with pytest.raises(SessionNotFound):
            client.start_session(checkpoint_id=cp["checkpoint_id"])
