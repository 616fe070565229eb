"""Authentication modes none, jwt and external: every auth route and its errors."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import jwt
import orjson
import pytest

from ..conftest import JWT_SECRET, register


async def test_register_login_me(make_hub):
    _, client = await make_hub(auth_mode="jwt")
    resp = await client.post(
        "/auth/register",
        {
            "email": "Ada@Example.org",
            "password": "analytical",
            "first_name": "Ada",
            "last_name": "L",
        },
    )
    assert resp.status == 200
    data = resp.json()
    assert data["token_type"] == "bearer"
    assert data["user"] == {
        "user_id": data["user"]["user_id"],
        "email": "ada@example.org",
        "full_name": "Ada L",
        "role": "user",
    }
    resp = await client.post("/auth/login", {"email": "ada@example.org", "password": "analytical"})
    assert resp.status == 200
    token = resp.json()["access_token"]
    me = await client.get("/auth/me", token=token)
    assert me.status == 200 and me.json()["email"] == "ada@example.org"


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"password": "longenough"}, 400, "required"),
        ({"email": "a@b.org"}, 400, "required"),
        ({"email": "not-an-email", "password": "longenough"}, 400, "not valid"),
        ({"email": "a@b.org", "password": "short"}, 400, "at least"),
        ({"email": 5, "password": "longenough"}, 400, "required"),
    ],
)
async def test_register_rejects_bad_input(make_hub, body, status, fragment):
    _, client = await make_hub(auth_mode="jwt")
    resp = await client.post("/auth/register", body)
    assert resp.status == status and fragment in resp.detail


async def test_register_duplicate_is_409(make_hub):
    _, client = await make_hub(auth_mode="jwt")
    await register(client, "dup@example.org")
    resp = await client.post("/auth/register", {"email": "DUP@example.org", "password": "x" * 12})
    assert resp.status == 409


async def test_login_errors(make_hub):
    app, client = await make_hub(auth_mode="jwt")
    await register(client, "u@example.org", "right password")
    assert (
        await client.post("/auth/login", {"email": "u@example.org", "password": "wrong pw"})
    ).status == 401
    assert (
        await client.post("/auth/login", {"email": "nobody@example.org", "password": "whatever"})
    ).status == 401
    assert (await client.post("/auth/login", {"email": "u@example.org"})).status == 400
    await app.store.set_user_active("u@example.org", False)
    resp = await client.post(
        "/auth/login", {"email": "u@example.org", "password": "right password"}
    )
    assert resp.status == 403 and "disabled" in resp.detail


async def test_register_and_login_are_404_outside_jwt_mode(make_hub):
    _, client = await make_hub()
    assert (
        await client.post("/auth/register", {"email": "a@b.org", "password": "x" * 10})
    ).status == 404
    assert (
        await client.post("/auth/login", {"email": "a@b.org", "password": "x" * 10})
    ).status == 404
    assert (await client.get("/auth/me")).status == 404


@pytest.mark.parametrize(
    "path",
    [
        "/auth/me",
        "/dash/sessions",
        "/dash/session-memory",
        "/dash/port-status",
        "/system/passbands",
    ],
)
async def test_token_required(make_hub, path):
    _, client = await make_hub(auth_mode="jwt")
    resp = await client.get(path)
    assert resp.status == 401 and "Bearer" in resp.detail
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = await client.get(path, token="not-a-jwt")
    assert resp.status == 401 and resp.detail == "Invalid token"


@pytest.mark.parametrize(
    "path", ["/dash/start-session", "/dash/end-session/x", "/dash/session-memory/x", "/send/x"]
)
async def test_token_required_for_posts(make_hub, path):
    _, client = await make_hub(auth_mode="jwt")
    assert (await client.post(path, {"command": "ping"})).status == 401


async def test_expired_and_forged_tokens(make_hub):
    _, client = await make_hub(auth_mode="jwt")
    token = await register(client, "t@example.org")
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"], issuer="phoebe-spawner")
    expired = jwt.encode({**claims, "exp": int(time.time()) - 10}, JWT_SECRET, algorithm="HS256")
    resp = await client.get("/auth/me", token=expired)
    assert resp.status == 401 and resp.detail == "Token has expired"
    forged = jwt.encode(claims, "another-secret-that-is-long-enough-000", algorithm="HS256")
    assert (await client.get("/auth/me", token=forged)).status == 401
    assert (await client.get("/auth/me", token=token)).status == 200


async def test_external_mode(make_hub):
    _, client = await make_hub(auth_mode="external")
    token = jwt.encode(
        {"sub": "ext-42", "email": "e@x.org", "full_name": "Ext", "exp": int(time.time()) + 60},
        JWT_SECRET,
        algorithm="HS256",
    )
    me = await client.get("/auth/me", token=token)
    assert me.status == 200
    assert me.json() == {
        "user_id": "ext-42",
        "email": "e@x.org",
        "full_name": "Ext",
        "role": "user",
    }
    no_sub = jwt.encode({"exp": int(time.time()) + 60}, JWT_SECRET, algorithm="HS256")
    assert (await client.get("/auth/me", token=no_sub)).status == 401
    assert (
        await client.post("/auth/login", {"email": "a@b.org", "password": "x" * 10})
    ).status == 404


async def test_weak_secret_refuses_to_start(make_hub):
    with pytest.raises(ValueError, match="well-known"):
        await make_hub(auth_mode="jwt", JWTAuthenticator__secret="test")
    with pytest.raises(ValueError, match="too short"):
        await make_hub(auth_mode="jwt", JWTAuthenticator__secret="short-secret")


async def test_external_mode_with_public_key_issuer_and_audience(make_hub, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "issuer.pem").write_bytes(pem)
    _, client = await make_hub(
        auth_mode="external",
        ExternalAuthenticator__secret="",
        ExternalAuthenticator__public_key_file=str(tmp_path / "issuer.pem"),
        ExternalAuthenticator__issuer="https://portal.example.org",
        ExternalAuthenticator__audience="phoebe",
    )
    claims = {
        "sub": "u-7",
        "role": "admin",
        "iss": "https://portal.example.org",
        "aud": "phoebe",
        "exp": int(time.time()) + 60,
    }
    good = jwt.encode(claims, key, algorithm="RS256")
    me = await client.get("/auth/me", token=good)
    assert me.status == 200 and me.json()["role"] == "admin"
    for bad, reason in (
        ({**claims, "aud": "other"}, "wrong audience"),
        ({**claims, "iss": "https://evil.example.org"}, "wrong issuer"),
    ):
        resp = await client.get("/auth/me", token=jwt.encode(bad, key, algorithm="RS256"))
        assert resp.status == 401 and reason in resp.detail
    # a token signed with the public key as an HMAC secret (algorithm confusion) is refused;
    # PyJWT will not make one, so it is signed by hand
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    payload = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=")
    signature = hmac.new(pem, header + b"." + payload, hashlib.sha256).digest()
    forged = b".".join([header, payload, base64.urlsafe_b64encode(signature).rstrip(b"=")])
    resp = await client.get("/auth/me", token=forged.decode())
    assert resp.status == 401 and resp.detail == "Invalid token"


async def test_failed_logins_are_rate_limited(make_hub):
    _, client = await make_hub(
        auth_mode="jwt",
        JWTAuthenticator__failed_login_burst=3,
        JWTAuthenticator__failed_logins_per_minute=1,
    )
    await register(client, "target@example.org", "the real password")
    for _ in range(3):
        wrong = await client.post(
            "/auth/login", {"email": "target@example.org", "password": "guess..."}
        )
        assert wrong.status == 401
    blocked = await client.post(
        "/auth/login", {"email": "target@example.org", "password": "the real password"}
    )
    assert blocked.status == 429 and "Too many failed logins" in blocked.detail
    assert 1 <= int(blocked.headers["Retry-After"]) <= 60
    # the same client address is limited for other accounts too (password spraying)
    await register(client, "other@example.org", "other password")
    resp = await client.post(
        "/auth/login", {"email": "other@example.org", "password": "other password"}
    )
    assert resp.status == 429
