"""The admin API, its live event stream, /metrics, and the HTML pages (standalone modes).

The same routes under JupyterHub are covered by ``tests/e2e``.
"""

from __future__ import annotations

import re

from ..conftest import Client, register
from ..sse import SSEStream
from ..waiting import async_wait_for

HTML = {"Accept": "text/html,application/xhtml+xml"}


async def jwt_hub_with_admin(make_hub, **overrides):
    """A jwt hub with one admin and one ordinary user: (app, client, admin token, user token)."""
    app, client = await make_hub(auth_mode="jwt", **overrides)
    await app.authenticator.create_user(
        "root@example.org", "admin password", role="admin", admin=True
    )
    resp = await client.post(
        "/auth/login", {"email": "root@example.org", "password": "admin password"}
    )
    assert resp.status == 200, resp.body
    admin = resp.json()["access_token"]
    user = await register(client, "ada@example.org")
    return app, client, admin, user


async def start(client: Client, token: str, **meta) -> str:
    resp = await client.post("/dash/start-session", meta, token=token)
    assert resp.status == 200, resp.body
    return str(resp.json()["session_id"])


async def send(client: Client, sid: str, command: str, token: str, **kw):
    resp = await client.post(f"/send/{sid}", {"command": command, **kw}, token=token)
    assert resp.status == 200, resp.body
    return resp.json()


async def test_admin_api_sees_and_ends_every_users_sessions(make_hub):
    app, client, admin, user = await jwt_hub_with_admin(make_hub)
    sid = await start(client, user, project_name="eclipse")
    await send(client, sid, "echo", user, value=1)

    resp = await client.get("/api/v1/admin/sessions", token=admin)
    assert resp.status == 200
    body = resp.json()
    [s] = body["sessions"]
    assert s["session_id"] == sid and s["user_name"] == "ada@example.org"
    assert s["status"] == "running" and s["project_name"] == "eclipse"
    assert s["command_count"] == 1 and s["last_command"] == "echo"
    assert s["last_command_ms"] >= 0 and s["age"] >= 0 and s["idle"] >= 0
    assert isinstance(s["mem_history"], list) and "capacity" in body
    filtered = await client.get("/api/v1/admin/sessions?status=failed", token=admin)
    assert filtered.json()["sessions"] == []

    # ordinary users get 403 on every admin route
    for path in ("/api/v1/admin/sessions", f"/api/v1/admin/sessions/{sid}", "/metrics"):
        resp = await client.get(path, token=user)
        assert resp.status == 403, path
    resp = await client.request("DELETE", f"/api/v1/admin/sessions/{sid}", token=user)
    assert resp.status == 403
    assert (await client.get("/api/v1/admin/sessions")).status == 401

    resp = await client.request("DELETE", "/api/v1/admin/sessions/nope", token=admin)
    assert resp.status == 404 and "nope" in resp.detail
    resp = await client.request("DELETE", f"/api/v1/admin/sessions/{sid}", token=admin)
    assert resp.status == 200 and resp.json() == {"success": True}
    # gone (410) at once, while its worker stops
    resp = await client.post(f"/send/{sid}", {"command": "ping"}, token=user)
    assert resp.status == 410 and resp.json()["reason"] == "ended by admin root@example.org"
    await async_wait_for(lambda: not app.manager.active(), "the admin's end to finish")
    # the owner still sees it, with the reason; a command to it is gone (410)
    listed = (await client.get("/dash/sessions", token=user)).json()
    assert (listed[sid]["status"], listed[sid]["reason"]) == (
        "stopped",
        "ended by admin root@example.org",
    )
    resp = await client.post(f"/send/{sid}", {"command": "ping"}, token=user)
    assert resp.status == 410 and resp.json()["reason"] == "ended by admin root@example.org"
    row = await app.store.get_session(sid)
    assert row["status"] == "stopped" and "admin root@example.org" in row["termination_reason"]


async def test_admin_event_stream_follows_sessions_live(make_hub):
    app, client, admin, user = await jwt_hub_with_admin(make_hub)
    snapshot = (await client.get("/api/v1/admin/sessions", token=admin)).json()
    stream = await SSEStream.open(
        client.base_url,
        f"/api/v1/admin/events?last_event_id={snapshot['last_event_id']}",
        token=admin,
    )
    try:
        assert stream.status == 200
        await async_wait_for(
            lambda: app.admin_events.watchers == 1, "the admin stream to be watched"
        )
        sid = await start(client, user)
        event = await stream.next_event()
        assert event["event"] == "session_started"
        assert (
            event["data"]["session_id"] == sid and event["data"]["user_name"] == "ada@example.org"
        )
        await send(client, sid, "echo", user, value=2)
        event = await stream.next_event()
        assert event["event"] == "session_updated"
        assert event["data"]["last_command"] == "echo" and event["data"]["command_count"] == 1
        await app.manager.sample_all()
        event = await stream.next_event()
        assert event["event"] == "sessions_sampled"
        [sample] = event["data"]["samples"]
        assert sample["session_id"] == sid and sample["mem_used"] > 0
        assert app.manager.sessions[sid].mem_history  # the plot's data
        await client.post(f"/dash/end-session/{sid}", token=user)
        kinds = [(await stream.next_event())["event"] for _ in range(2)]
        assert kinds == ["session_stopping", "session_stopped"]
    finally:
        await stream.close()
    await async_wait_for(
        lambda: app.admin_events.watchers == 0, "the admin stream to have no watcher"
    )
    user_stream = await SSEStream.open(client.base_url, "/api/v1/admin/events", token=user)
    assert user_stream.status == 403
    await user_stream.close()


async def test_no_command_events_are_made_while_nobody_watches(make_hub):
    app, client, _admin, user = await jwt_hub_with_admin(make_hub)
    sid = await start(client, user)
    before = app.admin_events.log.last_seq
    for _ in range(5):
        await send(client, sid, "echo", user)
    await app.manager.sample_all()
    assert app.admin_events.log.last_seq == before


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in the Prometheus text format (0 if absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{re.escape('{' + want + '}') if want else ''} (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_metrics_count_sessions_spawns_commands_failures_and_culls(make_hub):
    app, client, admin, user = await jwt_hub_with_admin(
        make_hub, PhoebeSpawnerApp__metrics_token="scrape-me-" + "x" * 20
    )
    sid = await start(client, user)
    await send(client, sid, "echo", user)
    await send(client, sid, "no_such_command", user)
    crashed = await start(client, user)
    await client.post(f"/send/{crashed}", {"command": "crash"}, token=user)  # 503
    await async_wait_for(
        lambda: app.manager.sessions[crashed].status == "failed", "the crashed session to fail"
    )
    culled = await start(client, user)
    await app.manager.sessions[culled].stop("culled", "idle for 1 s")

    resp = await client.get("/metrics", token="scrape-me-" + "x" * 20)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = resp.body.decode()
    assert metric(text, "phoebe_spawner_sessions", status="running") == 1
    assert metric(text, "phoebe_spawner_sessions", status="failed") == 1
    assert metric(text, "phoebe_spawner_spawn_duration_seconds_count", outcome="success") == 3
    assert metric(text, "phoebe_spawner_command_duration_seconds_count", command="other") >= 2
    assert metric(text, "phoebe_spawner_command_errors_total", command="other", kind="error") == 1
    assert metric(text, "phoebe_spawner_session_failures_total", stage="run") == 1
    assert metric(text, "phoebe_spawner_culls_total") == 1
    assert metric(text, "phoebe_spawner_active_users") == 1
    # admins may read it too; nobody else
    assert (await client.get("/metrics", token=admin)).status == 200
    assert (await client.get("/metrics", token="wrong")).status == 401
    assert (await client.get("/metrics")).status == 401


async def test_unknown_command_names_do_not_grow_the_metric_labels(make_hub):
    _app, client = await make_hub()
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    for i in range(20):
        await client.send(sid, f"made_up_{i}")
    text = (await client.get("/metrics")).body.decode()  # mode none: the anonymous admin
    assert "made_up" not in text
    assert metric(text, "phoebe_spawner_command_duration_seconds_count", command="other") == 20


async def test_pages_render_with_security_headers_and_escape_user_data(make_hub):
    _app, client, admin, user = await jwt_hub_with_admin(make_hub)
    await start(client, user, project_name="<script>alert(1)</script>")
    page = await client.get("/admin", token=admin, headers=HTML)
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    csp = page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'self'" in csp and "script-src 'self'" in csp
    assert "no-store" in page.headers["Cache-Control"]
    html = page.body.decode()
    assert "ada@example.org" in html and "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    static = re.findall(r'src="([^"]+admin\.js[^"]*)"', html)
    assert static and (await client.get(static[0])).status == 200

    resp = await client.get("/admin", token=user, headers=HTML)
    assert resp.status == 403 and "Only admins" in resp.body.decode()
    assert resp.headers["Content-Type"].startswith("text/html")

    mine = await client.get("/", token=user, headers=HTML)
    assert mine.status == 200 and "Your sessions" in mine.body.decode()
    assert "&lt;script&gt;" in mine.body.decode()
    # the compatible API's GET / is unchanged for API clients
    api = await client.get("/")
    assert api.status == 200 and api.json()["service"] == "phoebe-spawner"


async def test_browser_login_cookie_and_xsrf(make_hub):
    _app, client, _admin, _user = await jwt_hub_with_admin(make_hub)
    login_page = await client.get("/", headers=HTML)
    assert login_page.status == 401 and 'id="login-form"' in login_page.body.decode()
    resp = await client.post(
        "/auth/login", {"email": "ada@example.org", "password": "correct horse battery"}
    )
    login_cookie = resp.headers["Set-Cookie"].split(";", 1)[0]

    page = await client.get("/", headers={**HTML, "Cookie": login_cookie})
    assert page.status == 200
    xsrf_cookie = next(
        c.split(";", 1)[0] for c in page.headers.get_list("Set-Cookie") if c.startswith("_xsrf=")
    )
    token = re.search(r'data-xsrf="([^"]+)"', page.body.decode()).group(1)
    cookies = f"{login_cookie}; {xsrf_cookie}"

    # a cookie-authenticated write needs the page's XSRF token
    resp = await client.post("/dash/start-session", {}, headers={"Cookie": cookies})
    assert resp.status == 403 and "XSRF" in resp.detail
    resp = await client.post(
        "/dash/start-session", {}, headers={"Cookie": login_cookie, "X-XSRFToken": token}
    )
    assert resp.status == 403  # the token without its cookie is not enough
    resp = await client.post(
        "/dash/start-session", {}, headers={"Cookie": cookies, "X-XSRFToken": token}
    )
    assert resp.status == 200, resp.body
    sid = resp.json()["session_id"]
    resp = await client.post(
        f"/dash/end-session/{sid}", headers={"Cookie": cookies, "X-XSRFToken": token}
    )
    assert resp.status == 200
