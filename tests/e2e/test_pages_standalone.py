"""The pages of a standalone hub (jwt mode) in real headless Chromium.

``pages_standalone.cjs`` (playwright-core from npm, Debian's chromium) logs in through
the page's login form; on the user page it starts a session with a project name,
copies its full id and the notebook snippet, ends it, starts one from a checkpoint and
deletes another; on the admin page (900 px wide) it reads the memory plot's scales,
uses the filters and column sorting, watches the counters while sessions start and end
elsewhere, and ends a session through End's confirmation. This test sets the hub up
(users, sessions of several users, checkpoints, a failed session), checks what the
browser saw against what the hub holds, and runs the copied snippet.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from phoebe_spawner.jobs.events import EventLog

from ..conftest import Client, register
from ..waiting import async_wait_for
from .jupyterhub import ROOT
from .test_browser import NODE_MODULES, find_chromium

pytestmark = pytest.mark.browser

SCRIPT = Path(__file__).with_name("pages_standalone.cjs")
SNIPPET_SCRIPT = Path(__file__).with_name("user_snippet.cjs")
PASSWORD = "correct horse battery"


async def start(client: Client, token: str, **meta: Any) -> str:
    resp = await client.post("/dash/start-session", meta, token=token)
    assert resp.status == 200, resp.body
    return str(resp.json()["session_id"])


async def send(client: Client, sid: str, token: str, command: str, **kwargs: Any) -> Any:
    return await client.post(f"/send/{sid}", {"command": command, **kwargs}, token=token)


def browser() -> tuple[str, str]:
    """Chromium and node, or skip."""
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (Debian package chromium; .ci/run installs it)")
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "playwright-core").is_dir():
        pytest.skip("node or playwright-core is missing (.ci/node-packages installs them)")
    return chromium, node


async def drive(script: Path, node: str, chromium: str, **env: str) -> dict[str, Any]:
    """Run a driver script in ``node`` with ``env``; what it saw (its last output line)."""
    proc = await asyncio.create_subprocess_exec(
        node,
        str(script),
        env={**os.environ, "NODE_PATH": str(NODE_MODULES), "CHROMIUM": chromium, **env},
        cwd=NODE_MODULES.parent,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 240)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, f"{out.decode()}\n{err.decode()}"
    seen: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return seen


async def test_user_page_login_form_and_admin_filters_in_chromium(make_hub, tmp_path):
    chromium, node = browser()
    app, client = await make_hub(
        auth_mode="jwt",
        SessionManager__failed_linger=3600,
        SessionManager__max_sessions=20,
        SessionManager__memory_interval=0.5,  # the admin page's plots get points
    )
    await app.authenticator.create_user("root@example.org", "admin password", admin=True)
    ada = await register(client, "ada@example.org", PASSWORD)
    bob = await register(client, "bob@example.org", PASSWORD)
    resp = await client.post(
        "/auth/register",
        {
            "email": "carol@example.org",
            "password": PASSWORD,
            "first_name": "Carol",
            "last_name": "Shannon",
        },
    )
    assert resp.status == 200, resp.body
    carol = resp.json()["access_token"]

    # ada's checkpoint, of a session that has ended
    sid = await start(client, ada, project_name="alpha-fit")
    assert (
        await send(client, sid, ada, "set_value", twig="period@binary", value=3.25)
    ).status == 200
    resp = await client.post(f"/api/v1/sessions/{sid}/checkpoints", {"name": "tuned"}, token=ada)
    assert resp.status == 201, resp.body
    checkpoint = resp.json()["checkpoint_id"]
    resp = await client.post(f"/api/v1/sessions/{sid}/checkpoints", {"name": "scratch"}, token=ada)
    assert resp.status == 201, resp.body
    scratch = resp.json()["checkpoint_id"]
    assert (await client.post(f"/dash/end-session/{sid}", token=ada)).status == 200
    # other users' sessions, one of them failed
    beta = await start(client, bob, project_name="beta-orbit")
    gamma = await start(client, carol, project_name="gamma-ray")
    delta = await start(client, carol, project_name="delta-crash")
    await send(client, delta, carol, "crash")
    await async_wait_for(
        lambda: app.manager.sessions[delta].status == "failed", "the session to fail"
    )

    resp = await client.post(
        "/auth/login", {"email": "root@example.org", "password": "admin password"}
    )
    admin = resp.json()["access_token"]
    gap = asyncio.create_task(restart_the_admin_event_log_when_asked(app))
    artifacts = Path(os.environ.get("PHOEBE_SPAWNER_ARTIFACTS", ROOT / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    try:
        seen = await drive(
            SCRIPT,
            node,
            chromium,
            USER_PROFILE=str(tmp_path / "user-profile"),
            ADMIN_PROFILE=str(tmp_path / "admin-profile"),
            SERVICE_URL=client.base_url + "/",
            USER_EMAIL="ada@example.org",
            USER_PASSWORD=PASSWORD,
            ADMIN_EMAIL="root@example.org",
            ADMIN_PASSWORD="admin password",
            CHECKPOINT_ID=checkpoint,
            DELETE_CHECKPOINT_ID=scratch,
            PROJECT_NAME="omega-run",
            EXPECTED_ROWS="4",  # beta, gamma, delta (failed) and ada's new one
            FILTER_TEXT="GAMMA",
            FULL_NAME_FILTER="carol shannon",
            OTHER_TOKEN=bob,
            END_SESSION_ID=beta,
            ADMIN_TOKEN=admin,
            ARTIFACTS=str(artifacts),
        )
        await gap
    finally:
        gap.cancel()  # the driver failed before it asked
    assert seen["console_errors"] == []
    # the only error answers: the login page, the wrong password, the admin page's login
    assert seen["error_responses"] == ["401 GET /", "401 POST /auth/login", "401 GET /admin"]

    # the login form: the hub's own words for a wrong password, then the user page
    assert seen["login_heading"] == "Log in"
    assert seen["login_error"] == "Invalid email or password"
    assert seen["user_heading"] == "Your sessions"
    assert seen["user_name_shown"] == "ada@example.org"

    # the user page: a started session is ada's, running, with the project name typed
    # in; its full id is shown and copied; End stopped it
    [started] = seen["started"]
    assert seen["start_line"] == f"Session {started} is running."
    assert seen["shown_id"] == seen["copied_id"] == started and len(started) == 36
    assert seen["started_project"] == "omega-run" and seen["project_field_after"] == ""
    row = await app.store.get_session(started)
    assert row is not None and row["user_name"] == "ada@example.org"
    assert row["status"] == "stopped" and row["project_name"] == "omega-run"
    assert f'session_id="{started}"' in seen["snippet_for_started"]
    assert started not in seen["rows_after_end"]
    # "Start from it": a new session with the checkpoint's bundle and project
    assert seen["checkpoint_row"].startswith("tuned alpha-fit")
    [restored] = seen["from_checkpoint"]
    reply = await send(client, restored, ada, "get_value", twig="period@binary")
    assert reply.json()["result"] == 3.25
    assert app.manager.sessions[restored].project_name == "alpha-fit"
    # the checkpoint's Delete asks first: dismissed, it stays; accepted, it is gone
    assert seen["delete_question"].startswith("Delete checkpoint scratch?")
    assert seen["kept_after_dismiss"] == 1
    assert seen["checkpoint_line"] == "Deleted checkpoint scratch."
    assert seen["checkpoints_left"] == [checkpoint]
    assert (await client.get(f"/api/v1/checkpoints/{scratch}", token=ada)).status == 404
    assert (await client.get(f"/api/v1/checkpoints/{checkpoint}", token=ada)).status == 200

    # the notebook snippet (jwt mode: URL, email, a password prompt) attaches to the
    # newest session; pasted as copied, it answers from that session
    snippet = seen["copied_snippet"]
    assert snippet == seen["snippet"]
    assert f'session_id="{restored}"' in snippet and 'email="ada@example.org"' in snippet
    assert f'"{client.base_url}/"' in snippet and "password=getpass()" in snippet
    assert restored in seen["snippet_hint"]
    assert await asyncio.to_thread(run_snippet, snippet, PASSWORD) == 3.25
    assert app.manager.sessions[restored].status == "running"  # closing it left the session

    # the admin page: filters and sort
    assert seen["admin_heading"] == "All sessions"
    assert set(seen["all_rows"]) == {beta, gamma, delta, restored}
    assert seen["filtered_projects"] == ["gamma-ray"]  # case-insensitive match
    assert set(seen["full_name_rows"]) == {gamma, delta}  # carol's, by her full name
    assert seen["filtered_count_label"] == "4"  # the count is of all sessions
    assert seen["failed_rows"] == [delta]
    assert seen["no_rows_hint_hidden"] is True
    assert set(seen["running_rows"]) == {beta, gamma, restored}
    projects = ["alpha-fit", "beta-orbit", "delta-crash", "gamma-ray"]
    assert seen["sorted_up"] == projects and seen["aria_up"] == "ascending"
    assert seen["sorted_down"] == projects[::-1] and seen["aria_down"] == "descending"
    assert seen["users_sorted"] == [
        ["ada@example.org", None],
        ["bob@example.org", None],
        ["carol@example.org", "Carol Shannon"],
        ["carol@example.org", "Carol Shannon"],
    ]
    assert seen["project_aria_after"] is None  # one sorted column at a time

    # 900 px wide: every row's End button is within the window, nothing scrolls sideways
    assert seen["viewport_width"] == 900 and len(seen["end_right_edges"]) == 4
    assert max(seen["end_right_edges"]) <= 900 and seen["page_width"] <= 900
    # the memory plot has its scales: MiB from 0 up, time from the first sample to now
    high, low, since, until = seen["spark_labels"]
    assert re.fullmatch(r"\d+(\.\d)? MiB", high) and low == "0 MiB"
    assert re.fullmatch(r"\d+ s ago", since) and until == "now"
    assert seen["memory_title"].startswith("private memory (USS): ")
    assert "PSS: " in seen["memory_title"] and "RSS: " in seen["memory_title"]

    # counters counted from the page's state, as events come in
    assert seen["counters_loaded"] == {"count": "4", "running": "3", "capacity": "17 free of 20"}
    assert seen["counters_after_start"] == {
        "count": "5",
        "running": "4",
        "capacity": "16 free of 20",
    }
    assert seen["counters_after_end"] == seen["counters_loaded"]
    assert seen["counters_after_admin_end"] == {
        "count": "3",
        "running": "2",
        "capacity": "18 free of 20",
    }
    # End asked with the full id; dismissed, nothing was sent; accepted, it ended beta
    assert seen["end_question"].startswith(f"End session {beta} (beta-orbit) of bob@example.org?")
    assert seen["status_after_dismiss"] == "running"
    assert seen["deletes"] == [f"/api/v1/checkpoints/{scratch}", f"/api/v1/admin/sessions/{beta}"]
    row = await app.store.get_session(beta)
    assert row is not None and row["status"] == "stopped"
    assert "admin root@example.org" in row["termination_reason"]

    # after the stream came back on a new event log, the page reloaded its state
    zeta = seen["zeta"]
    assert set(seen["rows_after_gap"]) == {gamma, delta, restored, zeta}
    assert seen["counters_after_gap"] == {
        "count": "4",
        "running": "3",
        "capacity": "17 free of 20",
    }

    for sid, token in ((gamma, carol), (restored, ada), (zeta, bob)):
        assert (await client.post(f"/dash/end-session/{sid}", token=token)).status == 200


async def restart_the_admin_event_log_when_asked(app: Any) -> None:
    """Once a session named "gap" exists, do to the admin event stream what a hub restart
    does: a new event log whose ids start again at 1, and the old log's streams end."""
    await async_wait_for(
        lambda: any(s.project_name == "gap" for s in app.manager.sessions.values()),
        "the driver to start the session named gap",
        timeout=240,
    )
    old = app.admin_events.log
    app.admin_events.log = EventLog(max_events=old.max_events)
    old.close()


def run_snippet(snippet: str, password: str) -> object:
    """Run the page's snippet as a notebook would, typing ``password`` at the prompt;
    returns the value of its last line."""
    *body, last = snippet.strip().splitlines()
    namespace: dict[str, object] = {}
    real = getpass.getpass
    getpass.getpass = lambda prompt="Password: ", stream=None: password
    try:
        exec("\n".join(body), namespace)  # noqa: S102 - the page's own snippet, under test
        try:
            return eval(last, namespace)  # noqa: S307
        finally:
            namespace["client"].close()  # type: ignore[attr-defined]
    finally:
        getpass.getpass = real


async def test_the_user_pages_snippet_in_mode_none_runs_as_pasted(make_hub, tmp_path):
    chromium, node = browser()
    app, client = await make_hub()
    seen = await drive(
        SNIPPET_SCRIPT,
        node,
        chromium,
        USER_PROFILE=str(tmp_path / "profile"),
        SERVICE_URL=client.base_url + "/",
        PROJECT_NAME="kappa",
        ARTIFACTS=os.environ.get("PHOEBE_SPAWNER_ARTIFACTS", str(ROOT / "test-artifacts")),
    )
    assert seen["console_errors"] == [] and seen["error_responses"] == []
    assert seen["notebook_hidden_before"] is True  # no running session, no snippet
    assert seen["end_right"] <= 900 and seen["page_width"] <= 900
    sid = seen["session_id"]
    assert app.manager.sessions[sid].project_name == "kappa"
    # mode none: the URL and the session, nothing else
    call = f'client = PhoebeClient(\n    "{client.base_url}/",\n    session_id="{sid}",\n)'
    assert call in seen["snippet"]
    assert "token" not in seen["snippet"] and "password" not in seen["snippet"]
    assert sid in seen["hint"] and "(kappa)" in seen["hint"]
    await client.send(sid, "set_value", twig="period@binary", value=1.75)
    assert await asyncio.to_thread(run_snippet, seen["snippet"], "") == 1.75
    assert (await client.post(f"/dash/end-session/{sid}")).status == 200
