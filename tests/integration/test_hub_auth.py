"""Auth mode hub without a JupyterHub: configuration, login redirects, an unreachable hub.

The whole flow against a real JupyterHub is in ``tests/e2e``.
"""

from __future__ import annotations

import socket
import urllib.parse

import pytest

from phoebe_spawner.app import PhoebeSpawnerApp

HTML = {"Accept": "text/html"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def hub_mode(make_hub):
    return await make_hub(
        auth_mode="hub",
        PhoebeSpawnerApp__base_url="/services/phoebe",
        HubAuthenticator__service_name="phoebe",
        HubAuthenticator__api_url=f"http://127.0.0.1:{closed_port()}/hub/api",
        HubAuthenticator__api_token="service-token-for-tests",
    )


async def test_an_unreachable_jupyterhub_means_503_not_trust(make_hub):
    app, client = await hub_mode(make_hub)
    assert app.base_url == "/services/phoebe/"
    resp = await client.get(
        "/services/phoebe/dash/sessions", headers={"Authorization": "token abc"}
    )
    assert resp.status == 503 and "JupyterHub is not reachable" in resp.detail
    assert "service-token-for-tests" not in resp.body.decode()
    resp = await client.get("/services/phoebe/dash/sessions")
    assert resp.status == 401
    resp = await client.get("/services/phoebe/auth/config")
    assert resp.json() == {"mode": "hub"}
    assert (await client.get("/dash/sessions")).status == 404  # only under the prefix


async def test_pages_send_browsers_to_the_hub_oauth_login(make_hub):
    app, client = await hub_mode(make_hub)
    resp = await client.request(
        "GET", "/services/phoebe/admin", headers=HTML, follow_redirects=False
    )
    assert resp.status == 302
    location = urllib.parse.urlsplit(resp.headers["Location"])
    assert location.path == "/hub/api/oauth2/authorize"
    query = urllib.parse.parse_qs(location.query)
    assert query["client_id"] == ["service-phoebe"]
    assert query["redirect_uri"] == ["/services/phoebe/oauth_callback"]
    assert query["code_challenge_method"] == ["S256"] and query["state"]
    state_cookie = next(
        c for c in resp.headers.get_list("Set-Cookie") if c.startswith("service-phoebe-oauth-state")
    )
    assert "HttpOnly" in state_cookie and "Path=/services/phoebe/" in state_cookie
    # the callback refuses a state that does not match its cookie
    resp = await client.get("/services/phoebe/oauth_callback?code=x&state=forged")
    assert resp.status in (400, 403) and "state" in resp.detail.lower()
    # ... and never blocks the loop: JupyterHub's synchronous helper thread never started
    assert "_pool" not in app.authenticator.oauth._trait_values


async def test_mode_and_prefix_come_from_the_jupyterhub_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("JUPYTERHUB_SERVICE_NAME", "phoebe")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "t" * 32)
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/services/phoebe/")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8890")
    app = PhoebeSpawnerApp(config_file="", data_dir=str(tmp_path))
    assert app.auth_mode == "hub" and app.base_url == "/services/phoebe/"
    assert (app.ip, app.port) == ("127.0.0.1", 8890)
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN")
    monkeypatch.delenv("JUPYTERHUB_SERVICE_URL")
    other = PhoebeSpawnerApp(config_file="", data_dir=str(tmp_path))
    assert other.auth_mode == "none" and other.port == 8001


async def test_hub_mode_refuses_to_start_without_its_token(make_hub, monkeypatch):
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    with pytest.raises(ValueError, match="JUPYTERHUB_API_TOKEN"):
        await make_hub(auth_mode="hub", HubAuthenticator__service_name="phoebe")
