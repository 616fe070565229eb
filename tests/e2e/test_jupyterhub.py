"""phoebe-spawner as a managed JupyterHub service, end to end (real hub, proxy, workers).

The browser-side login here is a cookie-keeping HTTP client walking the same OAuth
redirects a browser does; ``test_browser`` drives real headless Chromium.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import numpy as np
import pytest

from phoebe_spawner.client import PermissionDeniedError, PhoebeClient

from ..waiting import async_wait_for
from .browser_flow import Browser
from .jupyterhub import PASSWORD, JupyterHubProcess, find_proxy

pytestmark = [pytest.mark.jupyterhub, pytest.mark.phoebe]


def call(
    hub: JupyterHubProcess,
    method: str,
    path: str,
    token: str | None,
    body: Any = None,
    scheme: str = "token",
) -> tuple[int, Any]:
    """One request to the service through the proxy (blocking; run in a thread)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"{scheme} {token}"
    data = None if body is None else json.dumps(body).encode()
    if method == "POST" and data is None:
        data = b""
    req = urllib.request.Request(
        hub.service_url + path.lstrip("/"), data=data, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            raw, status = r.read(), r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    return status, json.loads(raw) if raw else None


async def acall(*args: Any, **kw: Any) -> tuple[int, Any]:
    return await asyncio.to_thread(call, *args, **kw)


async def test_oauth_login_reaches_the_user_page_and_admin_rules(jupyterhub):
    alice = Browser()
    page = await asyncio.to_thread(alice.login, jupyterhub.service_url, "alice", PASSWORD)
    assert page.status == 200, page.body[:500]
    assert page.url.rstrip("/") == jupyterhub.service_url.rstrip("/")
    assert "Your sessions" in page.body and "alice" in page.body
    assert "frame-ancestors 'self'" in page.headers["content-security-policy"]
    assert "no-store" in page.headers["cache-control"]
    # the OAuth state cookie is gone, the service's login cookie is set
    assert alice.cookie("oauth-state") is None
    assert alice.cookie("service-phoebe") is not None

    # every page links back to the hub
    assert 'href="/hub/home"' in page.body
    home = await asyncio.to_thread(alice.open, jupyterhub.url + "/hub/home")
    assert home.status == 200 and home.url == jupyterhub.url + "/hub/home"

    denied = await asyncio.to_thread(alice.open, jupyterhub.service_url + "admin")
    assert denied.status == 403 and "Only admins" in denied.body
    assert 'id="relogin"' in denied.body and "phoebe-admins" in denied.body

    # cookie-authenticated API reads work; writes need the page's XSRF token
    sessions = await asyncio.to_thread(
        alice.open, jupyterhub.service_url + "dash/sessions", headers={"Accept": "*/*"}
    )
    assert sessions.status == 200 and json.loads(sessions.body) == {}
    refused = await asyncio.to_thread(
        alice.open, jupyterhub.service_url + "dash/start-session", b"{}", method="POST",
        headers={"Accept": "*/*", "Content-Type": "application/json"},
    )  # fmt: skip
    assert refused.status == 403 and "XSRF" in refused.body

    for admin in ("root", "carol"):  # a hub admin, and a holder of custom:phoebe:admin
        browser = Browser()
        page = await asyncio.to_thread(
            browser.login, jupyterhub.service_url + "admin", admin, PASSWORD
        )
        assert page.status == 200 and "All sessions" in page.body, (admin, page.body[:300])


async def test_a_user_added_to_the_admin_group_is_admin_after_logging_in_again(jupyterhub):
    """A TA added to phoebe-admins: the login made before still has the old rights (403,
    whose page says to log in again); the page's link logs in again, as admin."""
    bob = Browser()
    page = await asyncio.to_thread(bob.login, jupyterhub.service_url, "bob", PASSWORD)
    assert page.status == 200
    members = "/groups/phoebe-admins/users"
    await asyncio.to_thread(jupyterhub.api, "POST", members, {"users": ["bob"]})
    try:
        denied = await asyncio.to_thread(bob.open, jupyterhub.service_url + "admin")
        assert denied.status == 403, denied.body[:300]
        link = re.search(r'<p id="relogin">.*?<a href="([^"]+)"', denied.body, re.S)
        assert link is not None, denied.body
        again = await asyncio.to_thread(bob.open, urllib.parse.urljoin(denied.url, link[1]))
        assert again.status == 200 and "All sessions" in again.body, again.body[:300]
        assert again.url == jupyterhub.service_url + "admin"
        # a next page elsewhere is not followed: the user page instead
        away = await asyncio.to_thread(
            bob.open, jupyterhub.service_url + "relogin?next=https://example.org/"
        )
        assert away.status == 200 and away.url == jupyterhub.service_url
    finally:
        await asyncio.to_thread(jupyterhub.api, "DELETE", members, {"users": ["bob"]})


async def test_api_tokens_scopes_and_identity(jupyterhub):
    token = await asyncio.to_thread(jupyterhub.token_for, "alice")
    for scheme in ("token", "Bearer"):
        status, me = await acall(jupyterhub, "GET", "auth/me", token, scheme=scheme)
        assert status == 200 and me["user_id"] == "alice" and me["role"] == "user"
    status, config = await acall(jupyterhub, "GET", "auth/config", None)
    assert status == 200 and config == {"mode": "hub"}

    narrow = await asyncio.to_thread(jupyterhub.token_for, "alice", ["read:users:name!user=alice"])
    status, body = await acall(jupyterhub, "GET", "dash/sessions", narrow)
    assert status == 403 and "access:services!service=phoebe" in body["detail"]
    status, body = await acall(jupyterhub, "GET", "dash/sessions", "not-a-token")
    assert status == 401
    status, body = await acall(jupyterhub, "GET", "dash/sessions", None)
    assert status == 401
    status, body = await acall(
        jupyterhub, "POST", "auth/login", None, {"email": "x", "password": "y"}
    )
    assert status == 404  # accounts belong to JupyterHub in this mode

    admin = await asyncio.to_thread(jupyterhub.token_for, "root")
    status, me = await acall(jupyterhub, "GET", "auth/me", admin)
    assert me["role"] == "admin"
    assert (await acall(jupyterhub, "GET", "api/v1/admin/sessions", admin))[0] == 200
    assert (await acall(jupyterhub, "GET", "api/v1/admin/sessions", token))[0] == 403
    assert (await acall(jupyterhub, "GET", "metrics", token))[0] == 403


async def test_a_user_token_drives_a_phoebe_session_owned_by_the_hub_user(jupyterhub):
    token = await asyncio.to_thread(jupyterhub.token_for, "bob")
    status, session = await acall(jupyterhub, "POST", "dash/start-session", token, {})
    assert status == 200, session
    sid = session["session_id"]
    try:
        assert session["user_id"] == "bob"
        status, reply = await acall(
            jupyterhub, "POST", f"send/{sid}", token,
            {"command": "set_value", "twig": "incl@binary", "value": 87.5},
        )  # fmt: skip
        assert status == 200 and reply["success"], reply
        status, reply = await acall(
            jupyterhub, "POST", f"send/{sid}", token,
            {"command": "get_value", "twig": "incl@binary"},
        )  # fmt: skip
        assert reply["result"] == 87.5
        other = await asyncio.to_thread(jupyterhub.token_for, "alice")
        status, _ = await acall(jupyterhub, "POST", f"send/{sid}", other, {"command": "ping"})
        assert status == 403
        admin = await asyncio.to_thread(jupyterhub.token_for, "root")
        status, listing = await acall(jupyterhub, "GET", "api/v1/admin/sessions", admin)
        assert [s["user_name"] for s in listing["sessions"]] == ["bob"]
        status, metrics = await asyncio.to_thread(_metrics, jupyterhub, admin)
        assert status == 200 and 'phoebe_spawner_sessions{status="running"} 1.0' in metrics
    finally:
        status, _ = await acall(jupyterhub, "POST", f"dash/end-session/{sid}", token)
    assert status == 200


async def test_the_client_library_runs_phoebe_with_the_notebook_token(jupyterhub, monkeypatch):
    """What a notebook does: ``PhoebeClient()`` configured from the server's environment."""
    token = await asyncio.to_thread(jupyterhub.token_for, "bob")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", token)
    monkeypatch.setenv("PHOEBE_SPAWNER_URL", jupyterhub.service_url)
    monkeypatch.delenv("PHOEBE_SPAWNER_TOKEN", raising=False)
    events: list[str] = []

    def notebook() -> dict[str, Any]:
        with PhoebeClient() as client:
            session = client.start_session(project_name="e2e")
            client.set_value("incl@binary", 86.5)
            client.add_dataset("lc", compute_times=np.linspace(0, 1, 41), dataset="lc01")
            model = client.run_compute(progress=False, callback=lambda e: events.append(e.event))
            mine = client.get_sessions()
            incl = client.get_value("incl@binary")
        return {"session": session, "model": model, "mine": mine, "incl": incl}

    seen = await asyncio.to_thread(notebook)
    sid = seen["session"]["session_id"]
    assert seen["session"]["user_id"] == "bob" and list(seen["mine"]) == [sid]
    fluxes = seen["model"]["model"]["lc01"]["fluxes"]
    assert isinstance(fluxes, np.ndarray) and fluxes.shape == (41,)
    assert np.all(np.isfinite(fluxes)) and fluxes.max() > fluxes.min()
    assert float(getattr(seen["incl"], "value", seen["incl"])) == 86.5
    assert events[:2] == ["queued", "started"] and events[-1] == "succeeded"
    # leaving the `with` ended the session the client started (listed until its worker
    # is gone: end-session answers before that)
    admin = await asyncio.to_thread(jupyterhub.token_for, "root")

    async def ended() -> bool:
        _, listing = await acall(jupyterhub, "GET", "api/v1/admin/sessions", admin)
        return sid not in [s["session_id"] for s in listing["sessions"]]

    await async_wait_for(ended, "the session the client ended to leave the admin list")

    narrow = await asyncio.to_thread(jupyterhub.token_for, "bob", ["read:users:name!user=bob"])

    def refused() -> str:
        with PhoebeClient(jupyterhub.service_url, token=narrow) as client:
            try:
                client.get_sessions()
            except PermissionDeniedError as e:
                return e.detail
        return "no error"

    assert "access:services!service=phoebe" in await asyncio.to_thread(refused)


def _metrics(hub: JupyterHubProcess, token: str) -> tuple[int, str]:
    req = urllib.request.Request(
        hub.service_url + "metrics", headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.read().decode()


async def test_service_is_in_the_services_list(jupyterhub):
    token = await asyncio.to_thread(jupyterhub.token_for, "alice")
    user = await asyncio.to_thread(jupyterhub.api, "GET", "/user", None, token)
    assert "access:services!service=phoebe" in user["scopes"]
    services = await asyncio.to_thread(jupyterhub.api, "GET", "/services")
    phoebe = services["phoebe"]
    assert phoebe["display"] is True and phoebe["prefix"] == "/services/phoebe/"


async def test_the_service_stops_with_the_hub_and_the_next_start_takes_its_workers_back(
    tmp_path,
):
    """The shipped snippet keeps workers across a JupyterHub restart (``--keep-workers``):
    the service still exits within seconds of the hub, its worker lives on, and the
    service the restarted hub starts adopts it again."""
    proxy = find_proxy()
    if proxy is None:
        pytest.skip("configurable-http-proxy is not installed (.ci/node-packages installs it)")
    hub = JupyterHubProcess(tmp_path, proxy, phoebe_workers=False)
    await asyncio.to_thread(hub.start)
    try:
        token = await asyncio.to_thread(hub.token_for, "alice")
        status, session = await acall(hub, "POST", "dash/start-session", token, {})
        assert status == 200
        sid = session["session_id"]
        status, reply = await acall(
            hub, "POST", f"send/{sid}", token, {"command": "set_value", "twig": "x", "value": 7}
        )
        assert status == 200 and reply["success"], reply
        [worker] = await async_wait_for(  # a spare just forked is unnamed for a moment
            lambda: one if len(one := hub.workers()) == 1 else None, "the one worker"
        )
        first = await asyncio.to_thread(hub.restart)  # raises if a stop takes over 20 s
        assert first is not None and not first.is_running()  # the service stopped with the hub
        assert worker.is_running() and worker.status() != "zombie"
        status, reply = await acall(
            hub, "POST", f"send/{sid}", token, {"command": "get_value", "twig": "x"}
        )
        assert status == 200 and reply["result"] == 7, reply
        status, _ = await acall(hub, "POST", f"dash/end-session/{sid}", token)
        assert status == 200
        await async_wait_for(
            lambda: not worker.is_running() or worker.status() == "zombie", "the worker to exit"
        )
    finally:
        await asyncio.to_thread(hub.close, 10)
    log = hub.log_tail(800)
    assert re.search(r"phoebe-spawner .* \(auth hub, spawner ForkServerSpawner\)", log), log
