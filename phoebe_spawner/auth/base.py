"""The authenticator interface and the user model every mode produces.

An authenticator turns a request into a :class:`User` or refuses it. The request
handlers call :meth:`Authenticator.authenticate` from ``prepare()``; modes that own
user accounts (``jwt``) also implement :meth:`register` and :meth:`login`. Modes are
traitlets classes selected by name (entry-point group ``phoebe_spawner.authenticators``),
so the JupyterHub mode slots in beside the standalone ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from tornado.web import HTTPError, RequestHandler
from traitlets import Any as AnyTrait
from traitlets.config import LoggingConfigurable

#: Cookie holding the token for browsers' GET streams (set at login in jwt mode).
TOKEN_COOKIE = "phoebe-spawner-token"  # noqa: S105 - a cookie name, not a secret
SAFE_METHODS = ("GET", "HEAD")


class AuthError(Exception):
    """A refused request; ``status`` is the HTTP status, ``str()`` the client-facing detail."""

    def __init__(self, status: int, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class User:
    """An authenticated user. ``user_id`` owns sessions; the rest is for display and roles."""

    user_id: str
    name: str
    email: str = ""
    full_name: str = ""
    role: str = "user"
    admin: bool = False
    groups: tuple[str, ...] = field(default_factory=tuple)

    def to_api(self) -> dict[str, str]:
        """The compatible API's user object."""
        return {
            "user_id": self.user_id,
            "email": self.email,
            "full_name": self.full_name,
            "role": self.role,
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["groups"] = list(self.groups)
        return data


class Authenticator(LoggingConfigurable):
    """Base class: subclasses set ``mode`` and implement :meth:`authenticate`."""

    mode: ClassVar[str] = ""
    #: whether GET /auth/me answers (it is 404 in mode ``none``)
    has_identity: ClassVar[bool] = True
    #: whether this mode refuses accounts the hub's database marks inactive, so an admin
    #: can disable one (``PATCH /api/v1/admin/users/{name}``)
    can_disable_accounts: ClassVar[bool] = False

    store = AnyTrait(help="The hub's Store (set by the app, not config).")

    async def setup(self) -> None:
        """Validate configuration at start-up; raise ``ValueError`` to refuse to start."""

    async def authenticate(self, handler: RequestHandler) -> User:
        """The user making this request; raise :class:`AuthError` (401) if there is none."""
        raise NotImplementedError

    async def register(self, body: dict[str, Any], client: str = "") -> dict[str, Any]:
        """``POST /auth/register``: create an account (``client`` is the caller's address,
        for rate limits), return the token response."""
        raise AuthError(
            404, f"Registration is only available in jwt auth mode (mode is {self.mode})"
        )

    async def login(self, body: dict[str, Any], client: str = "") -> dict[str, Any]:
        """``POST /auth/login``: check credentials (``client`` is the caller's address, for
        rate limits), return the token response."""
        raise AuthError(404, f"Login is only available in jwt auth mode (mode is {self.mode})")

    def login_url(self, handler: RequestHandler) -> str | None:
        """Where a page sends a browser that is not logged in (``None``: the page offers
        its own login form, or says how to get a token)."""
        return None

    def login_page(self) -> dict[str, Any]:
        """What the login page shows besides the mode (jwt mode: whether anyone may
        register); passed to ``login.html`` by the pages' login."""
        return {}

    def logout(self, handler: RequestHandler) -> None:
        """Forget what this mode keeps of a browser's login, beyond the token cookie the
        logout handler clears (``POST /auth/logout``)."""

    def forget_user(self, name: str) -> None:
        """Drop whatever this mode caches about user ``name`` (called after an admin
        disables or re-enables the account), so the next request sees the change."""

    def extra_routes(self, prefix: str) -> list[tuple[str, type, dict[str, Any]]]:
        """Routes this mode adds under ``prefix`` (the OAuth callback in hub mode)."""
        return []

    def bearer_token(self, handler: RequestHandler) -> str:
        """The token of an ``Authorization: Bearer <t>`` header; 401 if absent.

        Browsers may use the token cookie set at login instead: for GET/HEAD (so an
        ``EventSource`` can authenticate) freely, and for state-changing requests only
        with the page's XSRF token in an ``X-XSRFToken`` header, so another site cannot
        make a logged-in browser write.
        """
        header = handler.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        cookie = None if header else handler.get_cookie(TOKEN_COOKIE)
        if cookie:
            if handler.request.method not in SAFE_METHODS:
                check_xsrf(handler)
            return cookie
        raise AuthError(401, "Missing or invalid Authorization header. Use: Bearer <token>")


def check_xsrf(handler: RequestHandler) -> None:
    """403 unless a cookie-authenticated write carries the page's XSRF token (tornado's
    double-submit check: the ``X-XSRFToken`` header, or an ``_xsrf`` form field, must
    match the ``_xsrf`` cookie). On writes the token is never taken from the URL: URLs
    end up in logs, histories and ``Referer`` headers."""
    if handler.request.method not in SAFE_METHODS and "_xsrf" in handler.request.query_arguments:
        raise AuthError(
            403,
            "XSRF token in the URL is not accepted on writes: send the X-XSRFToken header",
        )
    try:
        handler.check_xsrf_cookie()
    except HTTPError:
        raise AuthError(
            403, "XSRF check failed: send the page's X-XSRFToken header with the cookie"
        ) from None
