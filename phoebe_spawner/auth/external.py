"""Mode ``external``: trust JWTs issued by another service (a portal, an IdP).

Tokens are verified with a shared secret (HS*) or a public key (RS*/ES*/EdDSA), with
optional issuer and audience checks. Claims map to the user: ``sub`` (required) is
the user id, ``email``, ``full_name`` (or ``name``), ``role``; ``role == "admin"`` or
``admin: true`` makes an admin. Users are recorded in the database the first time
they are seen by this process.
"""

from __future__ import annotations

import os
import re
from typing import Any, ClassVar

from tornado.web import RequestHandler
from traitlets import Float, List, Unicode, default

from .base import Authenticator, AuthError, User
from .tokens import check_secret, decode

SUB_RE = re.compile(r"^[\w.@+:-]{1,255}$")


class ExternalAuthenticator(Authenticator):
    """Verify tokens issued elsewhere; never issues tokens itself."""

    mode: ClassVar[str] = "external"

    secret = Unicode(
        help="Shared secret for HS256/384/512 tokens (default: env PHOEBE_SPAWNER_JWT_SECRET)."
    ).tag(config=True)

    @default("secret")
    def _default_secret(self) -> str:
        return os.environ.get("PHOEBE_SPAWNER_JWT_SECRET", "")

    public_key = Unicode(
        "", help="PEM public key for RS*/ES*/EdDSA tokens (takes precedence over secret)."
    ).tag(config=True)
    public_key_file = Unicode("", help="Path of a PEM public key file.").tag(config=True)
    algorithms = List(Unicode(), help="Accepted algorithms.").tag(config=True)

    @default("algorithms")
    def _default_algorithms(self) -> list[str]:
        return ["RS256", "ES256", "EdDSA"] if self._key_is_public() else ["HS256"]

    issuer = Unicode("", help="Required 'iss' claim (empty: not checked).").tag(config=True)
    audience = Unicode("", help="Required 'aud' claim (empty: not checked).").tag(config=True)
    leeway = Float(30.0, help="Clock skew allowed when checking exp/nbf, in seconds.").tag(
        config=True
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._seen: set[str] = set()

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
        if self.public_key_file and not self.public_key:
            self.public_key = self._key()
        if not self._key_is_public():
            check_secret(self.secret, source="The external-mode secret (PHOEBE_SPAWNER_JWT_SECRET)")
        if any(a.startswith("HS") for a in self.algorithms) and self._key_is_public():
            raise ValueError("HS* algorithms cannot be used with a public key")

    async def authenticate(self, handler: RequestHandler) -> User:
        claims = decode(
            self.bearer_token(handler),
            self._key(),
            algorithms=list(self.algorithms),
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
        if sub not in self._seen:
            await self.store.ensure_user(
                name=sub,
                email=user.email or None,
                full_name=user.full_name,
                role=role,
                admin=user.admin,
            )
            self._seen.add(sub)
        return user
