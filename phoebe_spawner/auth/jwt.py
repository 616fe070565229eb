"""Mode ``jwt``: phoebe-spawner owns the accounts and issues its own tokens.

``POST /auth/register`` and ``/auth/login`` return a signed JWT; every other route
wants ``Authorization: Bearer <jwt>``. Passwords are hashed with Argon2id
(argon2-cffi) off the event loop. The signing secret comes from config or
``PHOEBE_SPAWNER_JWT_SECRET``; the hub refuses to start with an empty or weak one.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import Any, ClassVar

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from tornado.web import RequestHandler
from traitlets import Float, Integer, Unicode, default

from ..ratelimit import RateLimiter
from .base import Authenticator, AuthError, User
from .tokens import check_secret, decode

EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}\.[^@\s.]{1,63}$")
ISSUER = "phoebe-spawner"


def full_name(row: dict[str, Any]) -> str:
    return f"{row.get('first_name') or ''} {row.get('last_name') or ''}".strip()


class JWTAuthenticator(Authenticator):
    """Accounts in the hub's database; tokens signed with a shared secret (HS256)."""

    mode: ClassVar[str] = "jwt"

    secret = Unicode(
        help="""Secret that signs tokens (>= 32 characters). Defaults to the environment
        variable PHOEBE_SPAWNER_JWT_SECRET; never put it in a file others can read."""
    ).tag(config=True)

    @default("secret")
    def _default_secret(self) -> str:
        return os.environ.get("PHOEBE_SPAWNER_JWT_SECRET", "")

    expire_minutes = Integer(1440, help="Lifetime of issued tokens, in minutes.").tag(config=True)
    min_password_length = Integer(8, help="Shortest password /auth/register accepts.").tag(
        config=True
    )
    failed_logins_per_minute = Float(
        1.0,
        help="""Failed logins allowed per minute, on average, per account and per client
        address, after a burst of failed_login_burst; beyond that logins get 429.""",
    ).tag(config=True)
    failed_login_burst = Integer(5, help="Failed logins allowed at once.").tag(config=True)
    user_cache_seconds = Float(
        30.0,
        help="""Seconds a verified user is cached, so requests do not read the database
        each time; a disabled account is refused at the latest after this long.""",
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._hasher = PasswordHasher()
        self._dummy_hash = self._hasher.hash("phoebe-spawner timing equaliser")
        self._cache: dict[str, tuple[float, User]] = {}
        self._failed = RateLimiter(self.failed_logins_per_minute, self.failed_login_burst)

    async def setup(self) -> None:
        check_secret(self.secret, source="The jwt secret (PHOEBE_SPAWNER_JWT_SECRET)")

    # --- tokens -------------------------------------------------------------------------

    def issue(self, row: dict[str, Any]) -> dict[str, Any]:
        """The token response for a user row."""
        now = int(time.time())
        user = self._user(row)
        claims = {
            "sub": user.user_id,
            "email": user.email,
            "full_name": user.full_name,
            "role": user.role,
            "iss": ISSUER,
            "iat": now,
            "exp": now + 60 * self.expire_minutes,
        }
        token = jwt.encode(claims, self.secret, algorithm="HS256")
        return {"access_token": token, "token_type": "bearer", "user": user.to_api()}

    @staticmethod
    def _user(row: dict[str, Any]) -> User:
        return User(
            user_id=str(row["id"]),
            name=row["name"],
            email=row.get("email") or "",
            full_name=full_name(row),
            role=row.get("role") or "user",
            admin=bool(row.get("admin")) or row.get("role") == "admin",
        )

    async def authenticate(self, handler: RequestHandler) -> User:
        token = self.bearer_token(handler)
        claims = decode(token, self.secret, algorithms=["HS256"], issuer=ISSUER)
        sub = str(claims["sub"])
        cached = self._cache.get(sub)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        try:
            row = await self.store.get_user_by_id(int(sub))
        except ValueError:
            row = None
        if not row or not row.get("is_active"):
            raise AuthError(401, "User not found or inactive")
        user = self._user(row)
        self._cache[sub] = (time.monotonic() + self.user_cache_seconds, user)
        return user

    # --- accounts -------------------------------------------------------------------------

    async def hash_password(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(None, self._hasher.hash, password)

    async def _verify(self, hashed: str, password: str) -> bool:
        def verify() -> bool:
            try:
                return self._hasher.verify(hashed, password)
            except (VerificationError, InvalidHashError):
                return False

        return await asyncio.get_running_loop().run_in_executor(None, verify)

    def _credentials(self, body: dict[str, Any]) -> tuple[str, str]:
        email, password = body.get("email"), body.get("password")
        if not isinstance(email, str) or not isinstance(password, str) or not email or not password:
            raise AuthError(400, "Email and password are required")
        return email.strip().lower(), password

    async def register(self, body: dict[str, Any]) -> dict[str, Any]:
        email, password = self._credentials(body)
        if len(email) > 254 or not EMAIL_RE.match(email):
            raise AuthError(400, "Email address is not valid")
        if len(password) < self.min_password_length:
            raise AuthError(400, f"Password must be at least {self.min_password_length} characters")
        if len(password) > 1024:
            raise AuthError(400, "Password is too long (1024 characters at most)")
        names = {k: body.get(k) or "" for k in ("first_name", "last_name")}
        if not all(isinstance(v, str) and len(v) <= 100 for v in names.values()):
            raise AuthError(
                400, "first_name and last_name must be strings of at most 100 characters"
            )
        row = await self.create_user(
            email, password, first_name=names["first_name"], last_name=names["last_name"]
        )
        if row is None:
            raise AuthError(409, "A user with this email already exists")
        return self.issue(row)

    async def create_user(
        self,
        email: str,
        password: str,
        *,
        first_name: str = "",
        last_name: str = "",
        role: str = "user",
        admin: bool = False,
    ) -> dict[str, Any] | None:
        """Create an account (also used by ``phoebe-spawner create-user``); None if it exists."""
        row: dict[str, Any] | None = await self.store.create_user(
            name=email,
            email=email,
            password_hash=await self.hash_password(password),
            first_name=first_name,
            last_name=last_name,
            role=role,
            admin=admin,
        )
        return row

    async def login(self, body: dict[str, Any], client: str = "") -> dict[str, Any]:
        email, password = self._credentials(body)
        keys = [f"account:{email}", f"client:{client}"]
        wait = max(self._failed.wait_time(key) for key in keys)
        if wait:
            raise AuthError(429, f"Too many failed logins; try again in {wait:.0f} s", wait)
        row = await self.store.get_user_by_name(email)
        hashed = (row or {}).get("password_hash") or self._dummy_hash
        ok = await self._verify(hashed, password)
        if not row or not row.get("password_hash") or not ok:
            for key in keys:
                self._failed.hit(key)
            raise AuthError(401, "Invalid email or password")
        if not row.get("is_active"):
            raise AuthError(403, "Account is disabled")
        if self._hasher.check_needs_rehash(row["password_hash"]):
            await self.store.set_user_password(row["name"], await self.hash_password(password))
        return self.issue(row)
