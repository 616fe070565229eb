"""Mode ``external``: trust JWTs issued by another service (a portal, an IdP).

Tokens are verified with a shared secret (HS*) or a public key (RS*/PS* for RSA,
ES* for EC, EdDSA for Ed25519/Ed448). The accepted algorithms follow from the key's
type, so a token cannot choose how it is checked (a token signed with the public key
as an HMAC secret is refused); ``exp`` and ``sub`` are required, and ``iss``/``aud``
when ``issuer``/``audience`` are set (the hub warns at start-up when ``audience`` is
empty). Every bad token is a 401, never a 500.

Claims map to the user: ``sub`` (required) is the user id, ``email``, ``full_name``
(or ``name``), ``role``; ``role == "admin"`` or ``admin: true`` makes an admin. Users
are recorded in the database when first seen and re-read every ``user_cache_seconds``;
an account an admin disabled is refused (401).
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, ClassVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from tornado.web import RequestHandler
from traitlets import Float, List, Unicode, default

from .base import Authenticator, AuthError, User
from .tokens import check_secret, decode

SUB_RE = re.compile(r"^[\w.@+:-]{1,255}$")
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = {
    "secp256r1": "ES256",
    "secp384r1": "ES384",
    "secp521r1": "ES512",
    "secp256k1": "ES256K",
}


def load_public_key(pem: str) -> Any:
    """The key object of a PEM public key or certificate; ``ValueError`` if it is neither."""
    data = pem.strip().encode()
    if b"-----BEGIN CERTIFICATE-----" in data:
        from cryptography import x509

        return x509.load_pem_x509_certificate(data).public_key()
    return serialization.load_pem_public_key(data)


def algorithms_for(key: Any) -> list[str]:
    """The JWT algorithms a key of this type can verify (``ValueError`` for other keys)."""
    if isinstance(key, str):
        return list(HMAC_ALGORITHMS)
    if isinstance(key, rsa.RSAPublicKey):
        return list(RSA_ALGORITHMS)
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in EC_ALGORITHMS:
            raise ValueError(f"EC curve {key.curve.name} has no JWT algorithm")
        return [EC_ALGORITHMS[key.curve.name]]
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ["EdDSA"]
    raise ValueError(f"unsupported public key type {type(key).__name__}")


class ExternalAuthenticator(Authenticator):
    """Verify tokens issued elsewhere; never issues tokens itself."""

    mode: ClassVar[str] = "external"
    can_disable_accounts: ClassVar[bool] = True

    secret = Unicode(
        help="Shared secret for HS256/384/512 tokens (default: env PHOEBE_SPAWNER_JWT_SECRET)."
    ).tag(config=True)

    @default("secret")
    def _default_secret(self) -> str:
        return os.environ.get("PHOEBE_SPAWNER_JWT_SECRET", "")

    public_key = Unicode(
        "",
        help="""PEM public key (or certificate) for RS*/PS*/ES*/EdDSA tokens (takes
        precedence over secret).""",
    ).tag(config=True)
    public_key_file = Unicode("", help="Path of a PEM public key file.").tag(config=True)
    algorithms = List(
        Unicode(),
        help="""Accepted algorithms. Empty (the default): every algorithm of the key's type
        (RSA key: RS256/384/512 and PS256/384/512; EC key: the ES* of its curve; Ed25519
        or Ed448 key: EdDSA; shared secret: HS256/384/512). Naming an algorithm the key
        cannot verify stops the hub at start-up.""",
    ).tag(config=True)
    issuer = Unicode("", help="Required 'iss' claim (empty: not checked).").tag(config=True)
    audience = Unicode(
        "",
        help="""Required 'aud' claim (empty: not checked, and the hub warns at start-up: a
        token the issuer made for another service would be accepted here).""",
    ).tag(config=True)
    leeway = Float(30.0, help="Clock skew allowed when checking exp/nbf, in seconds.").tag(
        config=True
    )
    user_cache_seconds = Float(
        30.0,
        help="""Seconds a user's database record is trusted before it is read (and updated
        from the token's claims) again; a disabled account is refused at the latest after
        this long.""",
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._checked: dict[str, float] = {}  # sub -> monotonic time of the next check
        self._verify_key: Any = None
        self._algorithms: list[str] = []

    def _key_is_public(self) -> bool:
        return bool(self.public_key or self.public_key_file)

    def _key(self) -> str:
        if self.public_key:
            return self.public_key
        if self.public_key_file:
            with open(self.public_key_file) as f:
                return f.read()
        return self.secret

    async def setup(self) -> None:
        """Load the key, derive the algorithms from its type, refuse what cannot work."""
        if self._key_is_public():
            try:
                self._verify_key = load_public_key(self._key())
            except (OSError, ValueError, TypeError) as e:
                source = self.public_key_file or "ExternalAuthenticator.public_key"
                raise ValueError(f"{source} is not a PEM public key or certificate: {e}") from None
        else:
            check_secret(self.secret, source="The external-mode secret (PHOEBE_SPAWNER_JWT_SECRET)")
            self._verify_key = self.secret
        usable = algorithms_for(self._verify_key)
        wrong = [a for a in self.algorithms if a not in usable]
        if wrong:
            raise ValueError(
                f"ExternalAuthenticator.algorithms {wrong} cannot be verified with the configured "
                f"key (it verifies {', '.join(usable)})"
            )
        self._algorithms = list(self.algorithms) or usable
        if not self.audience:
            self.log.warning(
                "external mode: ExternalAuthenticator.audience is empty, so tokens the issuer "
                "made for other services are accepted here; set it to the 'aud' this hub's "
                "tokens carry%s",
                "" if self.issuer else " (and issuer to their 'iss')",
            )
        self.log.info("external mode: accepting %s tokens", ", ".join(self._algorithms))

    async def authenticate(self, handler: RequestHandler) -> User:
        if not self._algorithms:
            raise AuthError(503, "Authentication is not set up yet")
        claims = decode(
            self.bearer_token(handler),
            self._verify_key,
            algorithms=self._algorithms,
            issuer=self.issuer or None,
            audience=self.audience or None,
            leeway=self.leeway,
        )
        sub = str(claims["sub"])
        if not SUB_RE.match(sub):
            raise AuthError(401, "Token 'sub' claim is not a valid user id")
        role = str(claims.get("role") or "user")
        user = User(
            user_id=sub,
            name=sub,
            email=str(claims.get("email") or ""),
            full_name=str(claims.get("full_name") or claims.get("name") or ""),
            role=role,
            admin=role == "admin" or claims.get("admin") is True,
        )
        if self._checked.get(sub, 0.0) <= time.monotonic():
            row = await self.store.ensure_user(
                name=sub,
                email=user.email or None,
                full_name=user.full_name,
                role=role,
                admin=user.admin,
            )
            if not row.get("is_active", True):
                raise AuthError(401, "User not found or inactive")
            if len(self._checked) > 100_000:
                now = time.monotonic()
                self._checked = {k: t for k, t in self._checked.items() if t > now}
            self._checked[sub] = time.monotonic() + self.user_cache_seconds
        return user

    def forget_user(self, name: str) -> None:
        """Re-read user ``name`` from the database on its next request."""
        self._checked.pop(name, None)
