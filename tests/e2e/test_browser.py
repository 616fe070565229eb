"""The admin page in real headless Chromium, inside a real JupyterHub.

Chromium is driven by ``admin_live.cjs`` (playwright-core from npm, with Debian's
chromium; no browser download). Screenshots land in ``$PHOEBE_SPAWNER_ARTIFACTS``
(default ``test-artifacts/``) for people to look at.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from .jupyterhub import PASSWORD, ROOT

pytestmark = [pytest.mark.jupyterhub, pytest.mark.browser, pytest.mark.phoebe]

SCRIPT = Path(__file__).with_name("admin_live.cjs")
NODE_MODULES = ROOT / ".venv" / "node" / "node_modules"


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


async def test_admin_sees_a_session_appear_live_and_ends_it(jupyterhub, tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (Debian package chromium; .ci/run installs it)")
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "playwright-core").is_dir():
        pytest.skip("node or playwright-core is missing (.ci/node-packages installs them)")
    artifacts = Path(os.environ.get("PHOEBE_SPAWNER_ARTIFACTS", ROOT / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    for old in ("admin-live.png", "admin-ended.png"):
        (artifacts / old).unlink(missing_ok=True)
    token = await asyncio.to_thread(jupyterhub.token_for, "alice")
    proc = await asyncio.create_subprocess_exec(
        node,
        str(SCRIPT),
        env={
            **os.environ,
            "NODE_PATH": str(NODE_MODULES),
            "CHROMIUM": chromium,
            "USER_DATA_DIR": str(tmp_path / "chromium-profile"),
            "SERVICE_URL": jupyterhub.service_url,
            "ADMIN_USER": "root",
            "PASSWORD": PASSWORD,
            "USER_TOKEN": token,
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
    assert proc.returncode == 0, f"{out.decode()}\n{err.decode()}\n{jupyterhub.log_tail()}"
    seen = json.loads(out.decode().strip().splitlines()[-1])
    assert seen["heading"] == "All sessions" and seen["ended"] is True
    assert "alice" in seen["row"] and "live-demo" in seen["row"] and "running" in seen["row"]
    assert seen["end_question"].startswith(
        f"End session {seen['session_id']} (live-demo) of alice?"
    )
    # hub mode: in a notebook of this JupyterHub the client needs only the session
    sid = seen["own_session_id"]
    assert f'client = PhoebeClient(session_id="{sid}")' in seen["snippet"]
    assert "token" not in seen["snippet"].split("PhoebeClient(")[-1]
    assert seen["console_errors"] == []
    assert (artifacts / "admin-live.png").stat().st_size > 1000
    assert (artifacts / "admin-ended.png").stat().st_size > 1000
    status = await asyncio.to_thread(jupyterhub.api, "GET", "/users/alice")
    assert status["name"] == "alice"
    admin_token = await asyncio.to_thread(jupyterhub.token_for, "root")
    from .test_jupyterhub import acall

    code, listing = await acall(jupyterhub, "GET", "api/v1/admin/sessions", admin_token)
    # the session the admin ended stays listed a while (it answers 410 with its reason)
    assert code == 200
    ended = {row["session_id"]: row for row in listing["sessions"]}
    assert set(ended) == {seen["session_id"]}
    assert ended[seen["session_id"]]["status"] == "stopped"
    assert "admin" in (ended[seen["session_id"]]["reason"] or "")
