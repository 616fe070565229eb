"""The pages of a standalone hub (jwt mode) in real headless Chromium.

``pages_standalone.cjs`` (playwright-core from npm, Debian's chromium) logs in through
the page's login form, starts and ends a session and starts one from a checkpoint on
the user page, then uses the admin page's filters and column sorting. This test sets
the hub up (users, sessions of several users, a checkpoint, a failed session) and
checks what the browser saw against what the hub holds.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from ..conftest import Client, register
from ..waiting import async_wait_for
from .jupyterhub import ROOT
from .test_browser import NODE_MODULES, find_chromium

pytestmark = pytest.mark.browser

SCRIPT = Path(__file__).with_name("pages_standalone.cjs")
PASSWORD = "correct horse battery"


async def start(client: Client, token: str, **meta: Any) -> str:
    resp = await client.post("/dash/start-session", meta, token=token)
    assert resp.status == 200, resp.body
    return str(resp.json()["session_id"])


async def send(client: Client, sid: str, token: str, command: str, **kwargs: Any) -> Any:
    return await client.post(f"/send/{sid}", {"command": command, **kwargs}, token=token)


async def test_user_page_login_form_and_admin_filters_in_chromium(make_hub, tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (Debian package chromium; .ci/run installs it)")
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "playwright-core").is_dir():
        pytest.skip("node or playwright-core is missing (.ci/node-packages installs them)")
    app, client = await make_hub(auth_mode="jwt", SessionManager__failed_linger=3600)
    await app.authenticator.create_user("root@example.org", "admin password", admin=True)
    ada = await register(client, "ada@example.org", PASSWORD)
    bob = await register(client, "bob@example.org", PASSWORD)
    carol = await register(client, "carol@example.org", PASSWORD)

    # ada's checkpoint, of a session that has ended
    sid = await start(client, ada, project_name="alpha-fit")
    assert (
        await send(client, sid, ada, "set_value", twig="period@binary", value=3.25)
    ).status == 200
    resp = await client.post(f"/api/v1/sessions/{sid}/checkpoints", {"name": "tuned"}, token=ada)
    assert resp.status == 201, resp.body
    checkpoint = resp.json()["checkpoint_id"]
    assert (await client.post(f"/dash/end-session/{sid}", token=ada)).status == 200
    # other users' sessions, one of them failed
    beta = await start(client, bob, project_name="beta-orbit")
    gamma = await start(client, carol, project_name="gamma-ray")
    delta = await start(client, carol, project_name="delta-crash")
    await send(client, delta, carol, "crash")
    await async_wait_for(
        lambda: app.manager.sessions[delta].status == "failed", "the session to fail"
    )

    artifacts = Path(os.environ.get("PHOEBE_SPAWNER_ARTIFACTS", ROOT / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        node,
        str(SCRIPT),
        env={
            **os.environ,
            "NODE_PATH": str(NODE_MODULES),
            "CHROMIUM": chromium,
            "USER_PROFILE": str(tmp_path / "user-profile"),
            "ADMIN_PROFILE": str(tmp_path / "admin-profile"),
            "SERVICE_URL": client.base_url + "/",
            "USER_EMAIL": "ada@example.org",
            "USER_PASSWORD": PASSWORD,
            "ADMIN_EMAIL": "root@example.org",
            "ADMIN_PASSWORD": "admin password",
            "CHECKPOINT_ID": checkpoint,
            "EXPECTED_ROWS": "4",  # beta, gamma, delta (failed) and ada's new one
            "FILTER_TEXT": "GAMMA",
            "ARTIFACTS": str(artifacts),
        },
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
    seen = json.loads(out.decode().strip().splitlines()[-1])
    assert seen["console_errors"] == []
    # the only error answers: the login page, the wrong password, the admin page's login
    assert seen["error_responses"] == ["401 GET /", "401 POST /auth/login", "401 GET /admin"]

    # the login form: the hub's own words for a wrong password, then the user page
    assert seen["login_heading"] == "Log in"
    assert seen["login_error"] == "Invalid email or password"
    assert seen["user_heading"] == "Your sessions"
    assert seen["user_name_shown"] == "ada@example.org"

    # the user page: a started session is ada's and running, End stopped it
    [started] = seen["started"]
    assert seen["start_line"] == f"Session {started[:8]} is running."
    row = await app.store.get_session(started)
    assert row is not None and row["user_name"] == "ada@example.org"
    assert row["status"] == "stopped"
    assert started not in seen["rows_after_end"]
    # "Start from it": a new session with the checkpoint's bundle and project
    assert seen["checkpoint_row"].startswith("tuned alpha-fit")
    [restored] = seen["from_checkpoint"]
    reply = await send(client, restored, ada, "get_value", twig="period@binary")
    assert reply.json()["result"] == 3.25
    assert app.manager.sessions[restored].project_name == "alpha-fit"

    # the admin page: filters and sort
    assert seen["admin_heading"] == "All sessions"
    assert set(seen["all_rows"]) == {beta, gamma, delta, restored}
    assert seen["filtered_projects"] == ["gamma-ray"]  # case-insensitive match
    assert seen["filtered_count_label"] == "4"  # the count is of all sessions
    assert seen["failed_rows"] == [delta]
    assert seen["no_rows_hint_hidden"] is True
    assert set(seen["running_rows"]) == {beta, gamma, restored}
    projects = ["alpha-fit", "beta-orbit", "delta-crash", "gamma-ray"]
    assert seen["sorted_up"] == projects and seen["aria_up"] == "ascending"
    assert seen["sorted_down"] == projects[::-1] and seen["aria_down"] == "descending"
    assert seen["users_sorted"] == [
        "ada@example.org",
        "bob@example.org",
        "carol@example.org",
        "carol@example.org",
    ]
    assert seen["project_aria_after"] is None  # one sorted column at a time

    for sid, token in ((beta, bob), (gamma, carol), (restored, ada)):
        assert (await client.post(f"/dash/end-session/{sid}", token=token)).status == 200
