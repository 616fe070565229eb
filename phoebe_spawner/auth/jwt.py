"""Mode ``jwt``: phoebe-spawner owns the accounts and issues its own tokens.

``POST /auth/register`` and ``/auth/login`` return a signed JWT; every other route
wants ``Authorization: Bearer <jwt>``. Passwords are hashed with Argon2id
(argon2-cffi) off the event loop. The signing secret comes from config or
``PHOEBE_SPAWNER_JWT_SECRET``; the hub refuses to start with an empty or weak one.

Guessing is limited without letting anyone lock an owner out: failed logins back off
exponentially per (account, client address) and are rate-limited per client address,
and no limit applies to an account as a whole, so the right password from an address
that has not failed always works. Registration can be closed or restricted to email
domains, is rate-limited per address, and refuses blank, short and common passwords.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from tornado.web import RequestHandler
from traitlets import Bool, Enum, Float, Integer, List, Unicode, default, validate

from ..ratelimit import Backoff, RateLimiter
from .base import Authenticator, AuthError, User
from .passwords import MAX_PASSWORD_LENGTH, password_problem
from .tokens import check_secret, decode

T = TypeVar("T")

EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}\.[^@\s.]{1,63}$")
ISSUER = "phoebe-spawner"


def full_name(row: dict[str, Any]) -> str:
    return f"{row.get('first_name') or ''} {row.get('last_name') or ''}".strip()


class JWTAuthenticator(Authenticator):
    """Accounts in the hub's database; tokens signed with a shared secret (HS256)."""

    mode: ClassVar[str] = "jwt"
    can_disable_accounts: ClassVar[bool] = True

    secret = Unicode(
        help="""Secret that signs tokens (>= 32 characters). Defaults to the environment
        variable PHOEBE_SPAWNER_JWT_SECRET; never put it in a file others can read."""
    ).tag(config=True)

    @default("secret")
    def _default_secret(self) -> str:
        return os.environ.get("PHOEBE_SPAWNER_JWT_SECRET", "")

    expire_minutes = Integer(1440, help="Lifetime of issued tokens, in minutes.").tag(config=True)
    min_password_length = Integer(
        10, help="Shortest password /auth/register and create-user accept (characters)."
    ).tag(config=True)
    reject_common_passwords = Bool(
        True,
        help="""Refuse passwords on the built-in list of common leaked passwords
        (phoebe_spawner.auth.passwords.COMMON_PASSWORDS) at registration.""",
    ).tag(config=True)
    registration = Enum(
        ["open", "off", "domains"],
        "open",
        help="""Who may create an account with POST /auth/register: 'open' (anyone, like the
        old phoebe-server; PHOEBE Lab registers this way), 'off' (403: accounts are made
        with `phoebe-spawner create-user`), or 'domains' (only emails in
        registration_domains).""",
    ).tag(config=True)
    registration_domains = List(
        Unicode(),
        help="""Email domains allowed to register when registration = 'domains' (e.g.
        ['example.edu']; a domain also admits its subdomains, compared case-insensitively).""",
    ).tag(config=True)

    @validate("registration_domains")
    def _lower_domains(self, proposal: Any) -> list[str]:
        return [str(d).strip().lower().lstrip("@.") for d in proposal["value"] if str(d).strip()]

    registrations_per_hour = Float(
        60.0,
        help="""Accounts one client address may create per hour, on average, after a burst
        of registration_burst; beyond that /auth/register answers 429. 0 = no limit.""",
    ).tag(config=True)
    registration_burst = Integer(
        50,
        help="""Accounts one client address may create at once (a class behind one NAT
        registering together). 0 = no limit.""",
    ).tag(config=True)
    failed_logins_per_minute = Float(
        5.0,
        help="""Failed logins allowed per minute, on average, per client address (over all
        accounts: password spraying), after a burst of failed_login_burst; beyond that
        every login from the address gets 429. 0 = no limit.""",
    ).tag(config=True)
    failed_login_burst = Integer(
        20, help="Failed logins allowed at once per client address (over all accounts)."
    ).tag(config=True)
    failed_logins_before_backoff = Integer(
        5,
        help="""Failed logins for one account from one client address before that pair
        backs off (see failed_login_backoff). Other addresses are not affected.""",
    ).tag(config=True)
    failed_login_backoff = Float(
        15.0,
        help="""Seconds one (account, client address) pair must wait after its first failed
        login beyond failed_logins_before_backoff; doubles with each further failure up to
        failed_login_max_backoff. A successful login resets it. 0 = no back-off.""",
    ).tag(config=True)
    failed_login_max_backoff = Float(
        900.0,
        help="""Longest back-off of one (account, client address) pair, in seconds; a pair
        is forgotten this long after its last lock-out ended.""",
    ).tag(config=True)
    password_checks = Integer(
        1,
        help="""Password hashes computed or verified at once (Argon2id costs ~0.2 s of a
        core each): bounds the CPU that sign-ins and registrations can take from
        everyone else, whatever the number of client addresses.""",
    ).tag(config=True)
    password_check_queue = Integer(
        16,
        help="""Sign-ins and registrations that may wait for a password check; past it
        they are answered 429 at once (with Retry-After).""",
    ).tag(config=True)

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
        self._failed_by_address = RateLimiter(
            self.failed_logins_per_minute, self.failed_login_burst
        )
        self._backoff = Backoff(
            self.failed_logins_before_backoff,
            self.failed_login_backoff,
            self.failed_login_max_backoff,
        )
        self._registrations = RateLimiter(
            self.registrations_per_hour / 60.0, self.registration_burst
        )
        #: (account, address) pairs and addresses whose password check is under way
        self._verifying: set[str] = set()
        self._verifying_from: Counter[str] = Counter()
        self._hashing = asyncio.Semaphore(max(1, self.password_checks))
        self._hash_waiting = 0  # checks under way or waiting for the semaphore

    async def setup(self) -> None:
        check_secret(self.secret, source="The jwt secret (PHOEBE_SPAWNER_JWT_SECRET)")
        if self.registration == "domains" and not self.registration_domains:
            raise ValueError("JWTAuthenticator.registration = 'domains' needs registration_domains")
        self.log.info(
            "jwt mode: registration %s%s",
            self.registration,
            f" ({', '.join(self.registration_domains)})" if self.registration == "domains" else "",
        )

    def login_page(self) -> dict[str, Any]:
        """The login page's registration part: a form to create an account when
        ``registration`` is open (to the ``registration_domains`` only, when it says so),
        else a note to ask the administrator (the user page's login calls this)."""
        return {
            "registration": self.registration,
            "registration_domains": list(self.registration_domains),
            "min_password_length": self.min_password_length,
        }

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
        return await self._argon2(self._hasher.hash, password)

    async def _verify(self, hashed: str, password: str, *, clean: bool = False) -> bool:
        def verify() -> bool:
            try:
                return self._hasher.verify(hashed, password)
            except (VerificationError, InvalidHashError):
                return False

        return await self._argon2(verify, clean=clean)

    async def _argon2(self, work: Callable[..., T], *args: Any, clean: bool = False) -> T:
        """Run one Argon2 computation in a thread, at most ``password_checks`` at once, so
        a spray from many addresses queues here instead of taking every core.

        Past ``password_check_queue`` waiting, a request is answered 429 at once unless
        it is ``clean``: the only request in flight from an address with no recent
        failed login. The owner's own sign-in therefore waits its turn but is never
        refused, and each address gets at most one such place in the queue."""
        full = self._hash_waiting >= self.password_checks + self.password_check_queue
        if full and not clean:
            raise AuthError(429, "Too many sign-ins in progress, try again shortly", 1.0)
        self._hash_waiting += 1
        try:
            async with self._hashing:
                return await asyncio.get_running_loop().run_in_executor(None, work, *args)
        finally:
            self._hash_waiting -= 1

    def _credentials(self, body: dict[str, Any]) -> tuple[str, str]:
        email, password = body.get("email"), body.get("password")
        if not isinstance(email, str) or not isinstance(password, str) or not email or not password:
            raise AuthError(400, "Email and password are required")
        return email.strip().lower(), password

    async def register(self, body: dict[str, Any], client: str = "") -> dict[str, Any]:
        """``POST /auth/register``: 403 when closed (or the email's domain is not allowed),
        400 for a bad email or a password the policy refuses, 429 past the per-address
        rate, 409 for an existing account."""
        if self.registration == "off":
            raise AuthError(403, "Registration is closed")
        email, password = self._credentials(body)
        if len(email) > 254 or not EMAIL_RE.match(email):
            raise AuthError(400, "Email address is not valid")
        problem = password_problem(
            password, self.min_password_length, reject_common=self.reject_common_passwords
        )
        if problem:
            raise AuthError(400, problem)
        names = {k: body.get(k) or "" for k in ("first_name", "last_name")}
        if not all(isinstance(v, str) and len(v) <= 100 for v in names.values()):
            raise AuthError(
                400, "first_name and last_name must be strings of at most 100 characters"
            )
        if self.registration == "domains" and not self.domain_allowed(email):
            raise AuthError(
                403,
                "Registration is open only to email addresses at "
                + ", ".join(self.registration_domains),
            )
        wait = self._registrations.hit(f"address:{client}")
        if wait:
            raise AuthError(
                429, f"Too many registrations from this address; try again in {wait:.0f} s", wait
            )
        row = await self.create_user(
            email, password, first_name=names["first_name"], last_name=names["last_name"]
        )
        if row is None:
            raise AuthError(409, "A user with this email already exists")
        return self.issue(row)

    def domain_allowed(self, email: str) -> bool:
        """Whether ``email``'s domain is in ``registration_domains`` (or a subdomain of one)."""
        domain = email.rpartition("@")[2].lower()
        return any(domain == d or domain.endswith("." + d) for d in self.registration_domains)

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
        """``POST /auth/login``: 429 while the client address or this (account, address)
        pair is held back, else the password is checked: 401 wrong (counted against both),
        403 disabled account, 200 with a token (the pair's back-off is reset)."""
        email, password = self._credentials(body)
        address, pair = f"address:{client}", f"{email}\0{client}"
        if pair in self._verifying:
            # one check per pair at a time: parallel guesses cannot outrun the back-off
            raise AuthError(429, "A login for this account from this address is in progress", 1)
        wait_pair = self._backoff.wait_time(pair)
        wait_address = self._failed_by_address.wait_time(
            address, need=1 + self._verifying_from[address]
        )
        if wait_pair or wait_address:
            wait = max(wait_pair, wait_address)
            whom = "this account from this address" if wait_pair else "this address"
            detail = f"Too many failed logins for {whom}; try again in {wait:.0f} s"
            raise AuthError(429, detail, wait)
        self._verifying.add(pair)
        self._verifying_from[address] += 1
        try:
            row = await self.store.get_user_by_name(email)
            hashed = (row or {}).get("password_hash") or self._dummy_hash
            limiter = self._failed_by_address
            clean = self._verifying_from[address] == 1 and not limiter.wait_time(
                address, need=limiter.burst
            )
            ok = len(password) <= MAX_PASSWORD_LENGTH and await self._verify(
                hashed, password, clean=clean
            )
        finally:
            self._verifying.discard(pair)
            self._verifying_from[address] -= 1
            if not self._verifying_from[address]:
                del self._verifying_from[address]
        if not row or not row.get("password_hash") or not ok:
            self._failed_by_address.hit(address)
            self._backoff.fail(pair)
            raise AuthError(401, "Invalid email or password")
        self._backoff.reset(pair)
        if not row.get("is_active"):
            raise AuthError(403, "Account is disabled")
        if self._hasher.check_needs_rehash(row["password_hash"]):
            await self.store.set_user_password(row["name"], await self.hash_password(password))
        return self.issue(row)

    def forget_user(self, name: str) -> None:
        """Drop the cached identity of account ``name`` (it was disabled or changed), so
        its next request reads the database."""
        for sub, (_, user) in list(self._cache.items()):
            if user.name == name:
                del self._cache[sub]
