"""Pure parts of the auth hardening: which algorithms a key verifies, loading PEM keys
and certificates, and the password policy."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from phoebe_spawner.auth.external import algorithms_for, load_public_key
from phoebe_spawner.auth.passwords import COMMON_PASSWORDS, password_problem


def public_pem(key) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.mark.parametrize(
    ("private", "algorithms"),
    [
        (
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"],
        ),
        (ec.generate_private_key(ec.SECP256R1()), ["ES256"]),
        (ec.generate_private_key(ec.SECP384R1()), ["ES384"]),
        (ec.generate_private_key(ec.SECP521R1()), ["ES512"]),
        (ec.generate_private_key(ec.SECP256K1()), ["ES256K"]),
        (ed25519.Ed25519PrivateKey.generate(), ["EdDSA"]),
        (ed448.Ed448PrivateKey.generate(), ["EdDSA"]),
    ],
)
def test_algorithms_follow_the_key_type(private, algorithms):
    assert algorithms_for(load_public_key(public_pem(private))) == algorithms


def test_a_shared_secret_verifies_only_hmac():
    assert algorithms_for("s" * 40) == ["HS256", "HS384", "HS512"]


def test_unsupported_keys_and_garbage_are_refused():
    with pytest.raises(ValueError, match="unsupported public key type"):
        algorithms_for(load_public_key(public_pem(dsa.generate_private_key(key_size=2048))))
    with pytest.raises(ValueError, match="EC curve brainpoolP256r1 has no JWT algorithm"):
        algorithms_for(ec.generate_private_key(ec.BrainpoolP256R1()).public_key())
    with pytest.raises(ValueError, match="Unable to load PEM file"):
        load_public_key("ssh-rsa AAAAB3NzaC1yc2E user@host")


def test_a_certificate_gives_its_public_key():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    loaded = load_public_key(cert.public_bytes(serialization.Encoding.PEM).decode())
    assert algorithms_for(loaded) == ["ES256"]


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("", "Password must not be blank"),
        (" " * 8, "Password must not be blank"),
        ("\u3000" * 12, "Password must not be blank"),
        ("12345678", "Password must be at least 10 characters"),
        ("x" * 1025, "Password is too long (1024 characters at most)"),
        (
            "QWERTYUIOP",
            "Password is too common: choose one that is not on lists of leaked passwords",
        ),
        (
            "  1234567890  ",
            "Password is too common: choose one that is not on lists of leaked passwords",
        ),
        ("correct horse battery", None),
        ("x" * 1024, None),
    ],
)
def test_password_policy(password, problem):
    assert password_problem(password, 10) == problem


def test_common_list_is_lower_case_and_can_be_switched_off():
    assert all(p == p.lower().strip() for p in COMMON_PASSWORDS)
    assert len(COMMON_PASSWORDS) >= 200
    assert password_problem("password1234", 10, reject_common=False) is None
