"""Authentication hardening (issue 13): failed-login limits that never lock the owner out,
registration switches, limits and password policy, JSON-only auth routes and XSRF
outside the URL, and disabling an account (external tokens: test_external_auth.py).

Requests "from another address" leave from another loopback address (127.0.0.x) of
the same machine, so the hub sees a different ``remote_ip`` without proxy headers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from tornado.httpclient import HTTPRequest

from ..conftest import Client, Response, register
from ..waiting import async_wait_for

OWNER, ATTACKER = "127.0.0.1", "127.0.0.2"
PASSWORD = "correct horse battery"


async def post_from(
    client: Client,
    address: str,
    path: str,
    body: Any,
    headers: dict[str, str] | None = None,
) -> Response:
    """POST ``body`` (JSON) to the hub from the local address ``address``."""
    request = HTTPRequest(
        client.base_url + path,
        method="POST",
        body=orjson.dumps(body),
        headers={"Content-Type": "application/json", **(headers or {})},
        network_interface=address,
    )
    resp = await client.http.fetch(request, raise_error=False)
    return Response(resp.code, resp.body or b"", resp.headers)


async def login_from(client: Client, address: str, email: str, password: str) -> Response:
    return await post_from(client, address, "/auth/login", {"email": email, "password": password})


# --- failed logins ------------------------------------------------------------------------


async def test_guessing_from_one_address_never_locks_out_the_owner(make_hub):
    """The issue's attack with default settings: six (and more) wrong passwords from one
    address; the owner's right password from another address still works."""
    _, client = await make_hub(auth_mode="jwt")
    await register(client, "owner@example.org", PASSWORD)
    statuses = [
        (await login_from(client, ATTACKER, "owner@example.org", f"guess {i:04d}")).status
        for i in range(6)
    ]
    assert statuses == [401] * 6  # five free failures, the sixth starts the back-off
    held = await login_from(client, ATTACKER, "owner@example.org", "guess 0006")
    assert held.status == 429
    assert held.detail.startswith("Too many failed logins for this account from this address")
    assert 1 <= int(held.headers["Retry-After"]) <= 15
    # even the right password waits at the attacker's address...
    assert (await login_from(client, ATTACKER, "owner@example.org", PASSWORD)).status == 429
    # ...but not at the owner's, and the owner's own typo is a plain 401
    ok = await login_from(client, OWNER, "owner@example.org", PASSWORD)
    assert ok.status == 200 and ok.json()["user"]["email"] == "owner@example.org"
    assert (await login_from(client, OWNER, "owner@example.org", "typo typo")).status == 401
    assert (await login_from(client, OWNER, "owner@example.org", PASSWORD)).status == 200
    # the attacker's address may still log in to other accounts (no address-wide lock yet)
    await register(client, "other@example.org", PASSWORD)
    assert (await login_from(client, ATTACKER, "other@example.org", PASSWORD)).status == 200


async def test_backoff_ends_and_a_success_resets_it(make_hub):
    _, client = await make_hub(
        auth_mode="jwt",
        JWTAuthenticator__failed_logins_before_backoff=1,
        JWTAuthenticator__failed_login_backoff=0.2,
    )
    await register(client, "u@example.org", PASSWORD)
    assert (await login_from(client, ATTACKER, "u@example.org", "wrong one!")).status == 401
    assert (await login_from(client, ATTACKER, "u@example.org", "wrong two!")).status == 401
    assert (await login_from(client, ATTACKER, "u@example.org", PASSWORD)).status == 429

    async def admitted() -> Response | None:
        resp = await login_from(client, ATTACKER, "u@example.org", PASSWORD)
        return None if resp.status == 429 else resp

    resp = await async_wait_for(admitted, "the back-off to end", interval=0.05)
    assert resp.status == 200
    # the success reset the pair: its next failure is a free one again
    assert (await login_from(client, ATTACKER, "u@example.org", "wrong three")).status == 401
    assert (await login_from(client, ATTACKER, "u@example.org", PASSWORD)).status == 200


async def test_parallel_guesses_cannot_outrun_the_backoff(make_hub):
    from phoebe_spawner.auth.base import AuthError

    app, client = await make_hub(auth_mode="jwt")
    await register(client, "p@example.org", PASSWORD)
    body = {"email": "p@example.org", "password": "guess guess"}
    results = await asyncio.gather(
        *(app.authenticator.login(body, client=ATTACKER) for _ in range(10)),
        return_exceptions=True,
    )
    assert all(isinstance(r, AuthError) for r in results)
    answers = sorted((r.status, r.detail) for r in results if isinstance(r, AuthError))
    assert (
        answers
        == [(401, "Invalid email or password")]
        + [(429, "A login for this account from this address is in progress")] * 9
    )
    # another address is checked at the same time
    ok = await asyncio.gather(
        app.authenticator.login(body, client=ATTACKER),
        app.authenticator.login({**body, "password": PASSWORD}, client=OWNER),
        return_exceptions=True,
    )
    assert isinstance(ok[0], AuthError) and ok[0].status == 401
    assert isinstance(ok[1], dict) and ok[1]["user"]["email"] == "p@example.org"


async def test_password_spraying_is_limited_per_address(make_hub):
    _, client = await make_hub(
        auth_mode="jwt",
        JWTAuthenticator__failed_login_burst=3,
        JWTAuthenticator__failed_logins_per_minute=1,
    )
    for name in ("a", "b", "c", "d"):
        await register(client, f"{name}@example.org", PASSWORD)
    for name in ("a", "b", "c"):  # one guess per account
        assert (
            await login_from(client, ATTACKER, f"{name}@example.org", "Summer2026!")
        ).status == 401
    held = await login_from(client, ATTACKER, "d@example.org", PASSWORD)
    assert held.status == 429
    assert held.detail.startswith("Too many failed logins for this address")
    assert 1 <= int(held.headers["Retry-After"]) <= 60
    # every account still logs in from elsewhere
    for name in ("a", "b", "c", "d"):
        assert (await login_from(client, OWNER, f"{name}@example.org", PASSWORD)).status == 200


class CountingHasher:
    """The hub's real Argon2 hasher, counting how many computations run at once."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.running = 0
        self.most = 0

    def _count(self, work: Any, *args: Any) -> Any:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            return work(*args)
        finally:
            self.running -= 1

    def verify(self, hashed: str, password: str) -> bool:
        return bool(self._count(self.real.verify, hashed, password))

    def hash(self, password: str) -> str:
        return str(self._count(self.real.hash, password))

    def __getattr__(self, name: str) -> Any:  # check_needs_rehash and the like
        return getattr(self.real, name)


async def test_a_spray_from_many_addresses_takes_one_core_at_most(make_hub):
    """Failed logins from many addresses each cost an Argon2 check: they run one at a
    time (``password_checks``), a few wait, the rest are 429 at once; the owner's login
    from an address with no failures waits its turn and succeeds, during and after."""
    app, client = await make_hub(
        auth_mode="jwt",
        JWTAuthenticator__password_checks=1,
        JWTAuthenticator__password_check_queue=2,
    )
    await register(client, "owner@example.org", PASSWORD)
    hasher = CountingHasher(app.authenticator._hasher)
    app.authenticator._hasher = hasher
    # two guesses at once from each of 10 addresses (two accounts): an address's first
    # request in flight, while it has no failures, always gets a place; the second may
    # be refused
    spray = [
        login_from(client, f"127.0.1.{i}", email, f"Guess-{i}-Autumn!")
        for i in range(1, 11)
        for email in ("owner@example.org", f"nobody{i}@example.org")
    ]
    # the owner signs in while the spray fills the queue: it waits, but is not refused
    owner = login_from(client, OWNER, "owner@example.org", PASSWORD)
    results = await asyncio.gather(*spray[:10], owner, *spray[10:])
    owners, answers = results[10], results[:10] + results[11:]
    assert owners.status == 200, owners.body
    statuses = sorted(a.status for a in answers)
    assert set(statuses) <= {401, 429} and statuses.count(429) >= 1, statuses
    busy = [a for a in answers if a.status == 429]
    assert {a.detail for a in busy} == {"Too many sign-ins in progress, try again shortly"}
    assert all(a.headers["Retry-After"] == "1" for a in busy)
    assert hasher.most == 1  # never two Argon2 computations at once
    assert (await login_from(client, OWNER, "owner@example.org", PASSWORD)).status == 200


# --- registration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "detail"),
    [
        ("12345678", "Password must be at least 10 characters"),
        (" " * 8, "Password must not be blank"),
        (" " * 12, "Password must not be blank"),
        ("\t\n" * 6, "Password must not be blank"),
        ("1234567890", "Password is too common"),
        ("Password1234", "Password is too common"),
        (" qwertyuiop ", "Password is too common"),
        ("x" * 1025, "Password is too long (1024 characters at most)"),
    ],
)
async def test_register_password_policy(make_hub, password, detail):
    _, client = await make_hub(auth_mode="jwt")
    resp = await client.post("/auth/register", {"email": "p@example.org", "password": password})
    assert resp.status == 400 and resp.detail.startswith(detail), resp.body


async def test_register_policy_is_configurable_and_shared_passwords_still_pass(make_hub):
    _, client = await make_hub(
        auth_mode="jwt",
        JWTAuthenticator__min_password_length=8,
        JWTAuthenticator__reject_common_passwords=False,
    )
    assert (
        await client.post("/auth/register", {"email": "a@b.org", "password": "12345678"})
    ).status == 200
    _, client = await make_hub(auth_mode="jwt")
    for i, password in enumerate(("analytical", "x" * 10, PASSWORD, "a browser pw")):
        resp = await client.post("/auth/register", {"email": f"u{i}@b.org", "password": password})
        assert resp.status == 200, (password, resp.body)


async def test_registration_off(make_hub):
    app, client = await make_hub(auth_mode="jwt", JWTAuthenticator__registration="off")
    resp = await client.post("/auth/register", {"email": "a@b.org", "password": PASSWORD})
    assert resp.status == 403 and resp.detail == "Registration is closed"
    # accounts made by the operator still log in
    await app.authenticator.create_user("made@example.org", PASSWORD)
    assert (await login_from(client, OWNER, "made@example.org", PASSWORD)).status == 200


async def test_registration_domains(make_hub):
    _, client = await make_hub(
        auth_mode="jwt",
        JWTAuthenticator__registration="domains",
        JWTAuthenticator__registration_domains=["Example.EDU", "@lab.org"],
    )
    for email in ("a@example.edu", "b@Physics.Example.edu", "c@lab.org"):
        resp = await client.post("/auth/register", {"email": email, "password": PASSWORD})
        assert resp.status == 200, (email, resp.body)
    for email in ("d@evil.org", "e@notexample.edu", "f@example.edu.evil.org"):
        resp = await client.post("/auth/register", {"email": email, "password": PASSWORD})
        assert resp.status == 403, email
        assert resp.detail == "Registration is open only to email addresses at example.edu, lab.org"
    with pytest.raises(ValueError, match="needs registration_domains"):
        await make_hub(auth_mode="jwt", JWTAuthenticator__registration="domains")


async def test_registration_is_rate_limited_per_address(make_hub):
    _, client = await make_hub(
        auth_mode="jwt",
        JWTAuthenticator__registration_burst=2,
        JWTAuthenticator__registrations_per_hour=1,
    )
    for i in range(2):
        resp = await post_from(
            client, ATTACKER, "/auth/register", {"email": f"s{i}@x.org", "password": PASSWORD}
        )
        assert resp.status == 200
    # invalid requests are answered before the limit and cost nothing
    bad = await post_from(
        client, ATTACKER, "/auth/register", {"email": "s@x.org", "password": "short"}
    )
    assert bad.status == 400
    held = await post_from(
        client, ATTACKER, "/auth/register", {"email": "s9@x.org", "password": PASSWORD}
    )
    assert held.status == 429
    assert held.detail.startswith("Too many registrations from this address")
    assert 3000 <= int(held.headers["Retry-After"]) <= 3600
    resp = await post_from(
        client, OWNER, "/auth/register", {"email": "o@x.org", "password": PASSWORD}
    )
    assert resp.status == 200


# --- JSON only, XSRF outside the URL ----------------------------------------------------------


@pytest.mark.parametrize("path", ["/auth/login", "/auth/register"])
@pytest.mark.parametrize(
    ("ctype", "body"),
    [
        ("text/plain", orjson.dumps({"email": "a@b.org", "password": PASSWORD})),
        ("application/x-www-form-urlencoded", b"email=a%40b.org&password=correct+horse+battery"),
        ("multipart/form-data; boundary=x", b"--x--"),
        (None, orjson.dumps({"email": "a@b.org", "password": PASSWORD})),
    ],
)
async def test_login_and_register_take_only_json(make_hub, path, ctype, body):
    _, client = await make_hub(auth_mode="jwt")
    if path == "/auth/login":
        await register(client, "a@b.org", PASSWORD)
    headers = {"Content-Type": ctype} if ctype else {}
    resp = await client.request("POST", path, body=body, headers=headers)
    assert resp.status == 415 and resp.detail == "Content-Type must be application/json"
    # JSON with parameters (and any case) is JSON; after a refused register, nothing exists
    creds = orjson.dumps({"email": "a@b.org", "password": PASSWORD})
    json_type = {"Content-Type": "Application/JSON; charset=utf-8"}
    resp = await client.request("POST", path, body=creds, headers=json_type)
    assert resp.status == 200, resp.body


async def test_logout_needs_json_or_the_xsrf_token(make_hub):
    _, client = await make_hub(auth_mode="jwt")
    resp = await client.request("POST", "/auth/logout", body=b"")
    assert resp.status == 403 and resp.detail.startswith("XSRF check failed")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert (await client.request("POST", "/auth/logout", body=b"", headers=form)).status == 403
    assert (await client.post("/auth/logout", {})).status == 200
    xsrf = {"Cookie": "_xsrf=0123abcd", "X-XSRFToken": "0123abcd"}
    resp = await client.request("POST", "/auth/logout", body=b"", headers=xsrf)
    assert resp.status == 200 and resp.json() == {"success": True}
    cleared = resp.headers.get_list("Set-Cookie")
    assert any(
        c.startswith("phoebe-spawner-token=;") or 'phoebe-spawner-token=""' in c for c in cleared
    )
    # the token in the URL does not count on a write
    resp = await client.request(
        "POST", "/auth/logout?_xsrf=0123abcd", body=b"", headers={"Cookie": "_xsrf=0123abcd"}
    )
    assert resp.status == 403
    assert resp.detail == (
        "XSRF token in the URL is not accepted on writes: send the X-XSRFToken header"
    )


async def test_cookie_writes_take_the_xsrf_token_from_the_header_only(make_hub):
    _, client = await make_hub(auth_mode="jwt")
    login = await client.post("/auth/register", {"email": "c@example.org", "password": PASSWORD})
    token = login.json()["access_token"]
    cookie = f"phoebe-spawner-token={token}; _xsrf=0123abcd"
    resp = await client.request(
        "POST", "/dash/start-session?_xsrf=0123abcd", {}, token=None, headers={"Cookie": cookie}
    )
    assert resp.status == 403
    assert resp.detail.startswith("XSRF token in the URL is not accepted on writes")
    resp = await client.request(
        "POST", "/dash/start-session", {}, token=None, headers={"Cookie": cookie}
    )
    assert resp.status == 403 and resp.detail.startswith("XSRF check failed")
    resp = await client.request(
        "POST",
        "/dash/start-session",
        {},
        token=None,
        headers={"Cookie": cookie, "X-XSRFToken": "0123abcd"},
    )
    assert resp.status == 200, resp.body
    # reads may still carry it in the URL (EventSource cannot send headers)
    resp = await client.get("/dash/sessions?_xsrf=0123abcd", token=None, headers={"Cookie": cookie})
    assert resp.status == 200 and len(resp.json()) == 1


# --- disabling an account -------------------------------------------------------------------


async def admin_and_user(make_hub, **overrides):
    app, client = await make_hub(auth_mode="jwt", **overrides)
    await app.authenticator.create_user(
        "root@example.org", "admin password", role="admin", admin=True
    )
    admin = (await login_from(client, OWNER, "root@example.org", "admin password")).json()
    user = await register(client, "ada@example.org", PASSWORD)
    return app, client, admin["access_token"], user


async def test_disabling_an_account_checkpoints_and_stops_its_sessions(make_hub):
    app, client, admin, user = await admin_and_user(make_hub)
    sid = (await client.post("/dash/start-session", {"project_name": "Algol"}, token=user)).json()[
        "session_id"
    ]
    resp = await client.post(
        f"/send/{sid}", {"command": "set_value", "twig": "period@binary", "value": 2.5}, token=user
    )
    assert resp.json()["success"] is True
    assert (await client.get("/dash/sessions", token=user)).status == 200  # cached identity

    resp = await client.request(
        "PATCH", "/api/v1/admin/users/ada@example.org", {"active": False}, token=admin
    )
    assert resp.status == 200, resp.body
    assert resp.json() == {
        "name": "ada@example.org",
        "active": False,
        "sessions_ended": [sid],
        "checkpoint_failed": [],
    }
    row = await app.store.get_session(sid)
    assert row["status"] == "stopped"
    assert row["termination_reason"] == "account disabled by admin root@example.org"
    assert sid not in {s.id for s in app.manager.active()}
    # the token stops working at once (the cache was dropped), and so does the password
    resp = await client.get("/dash/sessions", token=user)
    assert resp.status == 401 and resp.detail == "User not found or inactive"
    resp = await login_from(client, OWNER, "ada@example.org", PASSWORD)
    assert resp.status == 403 and resp.detail == "Account is disabled"

    # re-enabled, the owner finds the checkpoint taken before the stop, with the model
    resp = await client.request(
        "PATCH", "/api/v1/admin/users/ada@example.org", {"active": True}, token=admin
    )
    assert resp.status == 200 and resp.json()["sessions_ended"] == []
    user = (await login_from(client, OWNER, "ada@example.org", PASSWORD)).json()["access_token"]
    [cp] = (await client.get("/api/v1/checkpoints", token=user)).json()["checkpoints"]
    assert cp["session_id"] == sid and cp["reason"] == "stop" and cp["project_name"] == "Algol"
    restored = await client.post(
        "/dash/start-session", {"checkpoint_id": cp["checkpoint_id"]}, token=user
    )
    assert restored.status == 200, restored.body
    value = await client.post(
        f"/send/{restored.json()['session_id']}",
        {"command": "get_value", "twig": "period@binary"},
        token=user,
    )
    assert value.json()["result"] == 2.5


async def test_admin_user_route_errors(make_hub):
    _, client, admin, user = await admin_and_user(make_hub)
    path = "/api/v1/admin/users/ada@example.org"
    resp = await client.request("PATCH", path, {"active": False}, token=user)
    assert resp.status == 403
    for body, detail in (
        ({}, 'Request body must be {"active": true} or {"active": false}'),
        (
            {"active": False, "role": "admin"},
            'Request body must be {"active": true} or {"active": false}',
        ),
        ({"active": "no"}, "'active' must be true or false"),
    ):
        resp = await client.request("PATCH", path, body, token=admin)
        assert resp.status == 400 and resp.detail == detail
    resp = await client.request(
        "PATCH", "/api/v1/admin/users/nobody@x.org", {"active": False}, token=admin
    )
    assert resp.status == 404 and resp.detail == "User nobody@x.org not found"
    resp = await client.request(
        "PATCH", "/api/v1/admin/users/root@example.org", {"active": False}, token=admin
    )
    assert resp.status == 400 and resp.detail == "Admins cannot disable their own account"
    _, none_client = await make_hub()
    resp = await none_client.request("PATCH", "/api/v1/admin/users/anyone", {"active": False})
    assert resp.status == 400 and resp.detail == "Accounts cannot be disabled in auth mode none"


@pytest.mark.parametrize(
    ("password", "message"),
    [
        (
            "password1234",
            "Password is too common: choose one that is not on lists of leaked passwords",
        ),
        ("short pw", "Password must be at least 10 characters"),
        (" " * 12, "Password must not be blank"),
    ],
)
def test_create_user_applies_the_password_policy(tmp_path, password, message):
    from .test_cli import run

    args = ["create-user", "--email", "a@b.org", f"--PhoebeSpawnerApp.data_dir={tmp_path}"]
    result = run(args, cwd=tmp_path, env={"PHOEBE_SPAWNER_NEW_PASSWORD": password})
    assert result.returncode != 0 and result.stderr.strip() == message, result.stderr
