"""External mode's tokens (issue 13): every bad token is a 401 (never a 500 or a logged
traceback), the accepted algorithms follow the configured key's type, ``iss``/``aud``
are required when configured, a missing audience is warned about at start-up, and a
disabled external account is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from phoebe_spawner.auth.external import ExternalAuthenticator


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: Any, payload: Any, key: bytes = b"k") -> str:
    """A JWT assembled by hand (PyJWT refuses to make the bad ones), HMAC-SHA256 signed."""
    signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    sig = hmac.new(key, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64(sig)}"


def pem(public_key: Any) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


async def external_hub(make_hub, tmp_path, public_key: Any, **overrides):
    (tmp_path / "issuer.pem").write_bytes(pem(public_key))
    return await make_hub(
        auth_mode="external",
        ExternalAuthenticator__secret="",
        ExternalAuthenticator__public_key_file=str(tmp_path / "issuer.pem"),
        **overrides,
    )


async def test_external_mode_answers_every_bad_token_401(make_hub, tmp_path, caplog):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _, client = await external_hub(make_hub, tmp_path, key.public_key())
    exp = int(time.time()) + 60
    claims = {"sub": "u-1", "exp": exp}
    assert (await client.get("/auth/me", token=jwt.encode(claims, key, "RS256"))).status == 200
    assert (await client.get("/auth/me", token=jwt.encode(claims, key, "PS384"))).status == 200

    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    header = {"alg": "RS256", "typ": "JWT"}
    bad = {
        "ES256 header": jwt.encode(claims, ec_key, "ES256"),
        "EdDSA header": jwt.encode(claims, ed_key, "EdDSA"),
        # algorithm confusion: the PUBLIC KEY used as an HMAC secret
        "HS256 with the public key": raw_token(
            {"alg": "HS256", "typ": "JWT"}, claims, pem(key.public_key())
        ),
        "alg none": f"{b64(orjson.dumps({'alg': 'none'}))}.{b64(orjson.dumps(claims))}.",
        "unknown alg": raw_token({"alg": "XX999"}, claims),
        "alg not a string": raw_token({"alg": ["RS256"]}, claims),
        "no alg": raw_token({"typ": "JWT"}, claims),
        "kid and jku": raw_token({**header, "kid": "../../etc/passwd", "jku": "http://x"}, claims),
        "header not an object": raw_token([1, 2], claims),
        "payload not an object": raw_token(header, [1, 2]),
        "payload a string": raw_token(header, "sub"),
        "garbage segments": "a.b.c",
        "bad base64": "@@@.###.$$$",
        "two segments": "eyJhbGciOiJSUzI1NiJ9.e30",
        "empty segments": "..",
        "huge number": raw_token(header, {"sub": "u", "exp": 10**400}),
        "non-utf8 header": ".".join([b64(b"\xff\xfe"), b64(b"{}"), b64(b"x")]),
    }
    caplog.set_level(logging.DEBUG)
    for name, token in bad.items():
        resp = await client.get("/auth/me", token=token)
        assert resp.status == 401, (name, resp.body)
        assert resp.detail == "Invalid token", (name, resp.detail)
    no_exp = await client.get("/auth/me", token=jwt.encode({"sub": "u-1"}, key, "RS256"))
    assert no_exp.status == 401 and no_exp.detail == "Token is missing the 'exp' claim"
    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert tracebacks == []


@pytest.mark.parametrize(
    ("private", "algorithm"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
    ],
    ids=["RS256", "ES256"],
)
async def test_hs256_signed_with_the_public_key_is_refused(make_hub, tmp_path, private, algorithm):
    """Algorithm confusion: a library that trusts the token's ``alg`` would verify an HS256
    token with the configured key's bytes as the HMAC secret. Those bytes are public."""
    key = private()
    app, client = await external_hub(make_hub, tmp_path, key.public_key())
    assert algorithm in app.authenticator._algorithms
    claims = {"sub": "u-3", "role": "admin", "exp": int(time.time()) + 60}
    signed = await client.get("/auth/me", token=jwt.encode(claims, key, algorithm))
    assert signed.status == 200 and signed.json()["role"] == "admin"  # the key works

    public = (tmp_path / "issuer.pem").read_bytes()  # exactly what the hub was given
    forged = raw_token({"alg": "HS256", "typ": "JWT"}, claims, public)
    resp = await client.get("/auth/me", token=forged)
    assert resp.status == 401 and resp.detail == "Invalid token"


async def test_external_algorithms_follow_the_key_type(make_hub, tmp_path):
    ec_key = ec.generate_private_key(ec.SECP384R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    app, client = await external_hub(make_hub, tmp_path, ec_key.public_key())
    assert app.authenticator._algorithms == ["ES384"]
    claims = {"sub": "u-2", "exp": int(time.time()) + 60}
    assert (await client.get("/auth/me", token=jwt.encode(claims, ec_key, "ES384"))).status == 200
    resp = await client.get("/auth/me", token=jwt.encode(claims, rsa_key, "RS256"))
    assert resp.status == 401 and resp.detail == "Invalid token"

    ed_key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "ed").mkdir()
    app, client = await external_hub(make_hub, tmp_path / "ed", ed_key.public_key())
    assert app.authenticator._algorithms == ["EdDSA"]
    assert (await client.get("/auth/me", token=jwt.encode(claims, ed_key, "EdDSA"))).status == 200

    app, _ = await make_hub(auth_mode="external")  # the shared secret
    assert app.authenticator._algorithms == ["HS256", "HS384", "HS512"]
    (tmp_path / "rsa").mkdir()
    with pytest.raises(ValueError, match=r"\['HS256'\] cannot be verified with the configured key"):
        await external_hub(
            make_hub,
            tmp_path / "rsa",
            rsa_key.public_key(),
            ExternalAuthenticator__algorithms=["HS256"],
        )


async def test_external_requires_issuer_and_audience_when_configured(make_hub, tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _, client = await external_hub(
        make_hub,
        tmp_path,
        key.public_key(),
        ExternalAuthenticator__issuer="https://portal.example.org",
        ExternalAuthenticator__audience="phoebe",
    )
    claims = {"sub": "u-3", "iss": "https://portal.example.org", "aud": "phoebe"}
    claims["exp"] = int(time.time()) + 60
    assert (await client.get("/auth/me", token=jwt.encode(claims, key, "RS256"))).status == 200
    for missing in ("iss", "aud"):
        token = jwt.encode({k: v for k, v in claims.items() if k != missing}, key, "RS256")
        resp = await client.get("/auth/me", token=token)
        assert resp.status == 401 and resp.detail == f"Token is missing the '{missing}' claim"


async def test_external_warns_at_startup_without_audience(caplog):
    logger = logging.getLogger("test-external-audience")
    caplog.set_level(logging.INFO, logger=logger.name)
    auth = ExternalAuthenticator(secret="s" * 40, log=logger)
    await auth.setup()
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "ExternalAuthenticator.audience is empty" in warning.getMessage()
    caplog.clear()
    auth = ExternalAuthenticator(secret="s" * 40, audience="phoebe", issuer="me", log=logger)
    await auth.setup()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_disabling_an_external_account(make_hub):
    from ..conftest import JWT_SECRET

    app, client = await make_hub(auth_mode="external")
    exp = int(time.time()) + 60
    admin = jwt.encode({"sub": "boss", "role": "admin", "exp": exp}, JWT_SECRET, "HS256")
    user = jwt.encode({"sub": "ext-7", "exp": exp}, JWT_SECRET, "HS256")
    resp = await client.post("/dash/start-session", {}, token=user)
    assert resp.status == 200
    sid = resp.json()["session_id"]
    resp = await client.request(
        "PATCH", "/api/v1/admin/users/ext-7", {"active": False}, token=admin
    )
    assert resp.status == 200 and resp.json()["sessions_ended"] == [sid]
    resp = await client.get("/dash/sessions", token=user)
    assert resp.status == 401 and resp.detail == "User not found or inactive"
    row = await app.store.get_session(sid)
    assert (
        row["status"] == "stopped" and row["termination_reason"] == "account disabled by admin boss"
    )
