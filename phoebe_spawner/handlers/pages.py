"""Server-rendered HTML pages: the user page (service root) and the admin page (``/admin``).

Templates live in ``share/phoebe_spawner/templates`` and assets in ``.../static``
(served by the hub itself: no CDN). Pages render the current state on the server and
their script keeps it live from the event streams (``/api/v1/events`` for a user,
``/api/v1/admin/events`` for admins). Writes from a page (ending a session) go through
the JSON API with the login cookie and the page's XSRF token.

A browser that is not logged in is sent to the login: JupyterHub's OAuth flow in hub
mode, a small login form in jwt mode, an explanation otherwise. Pages are never cached
and carry a strict Content-Security-Policy (scripts and styles from this service only;
``frame-ancestors 'self'``).
"""

from __future__ import annotations

import time
import traceback
from typing import Any

from tornado import httputil

from ..auth.base import AuthError
from ..checkpoints import checkpoint_to_api
from ..errors import SessionError
from .base import ApiError, BaseHandler

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'self'",
    ]
)


def wants_html(accept: str) -> bool:
    """Whether a request's ``Accept`` header asks for a page rather than JSON."""
    return "text/html" in accept.lower()


class PageHandler(BaseHandler):
    """Base of the HTML pages: login redirects, security headers, HTML errors."""

    auth_required = False  # authenticated in prepare(), with a login redirect
    admin_only = False

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Content-Security-Policy", CSP)

    async def prepare(self) -> None:
        await super().prepare()
        await self.login_or_redirect()
        if not self._finished and self.admin_only:
            self.require_admin("Only admins may see this page")

    async def login_or_redirect(self) -> None:
        """Authenticate, or answer with the way to log in (redirect or login page)."""
        try:
            self.current_user = await self.hub.authenticator.authenticate(self)
        except AuthError as e:
            if e.status != 401:
                raise
            url = self.hub.authenticator.login_url(self)
            if url:
                self.redirect(url)
                return
            self.set_status(401)
            login = self.hub.authenticator.login_page()
            self.render_page("login.html", title="Log in", detail=e.detail, **login)

    def render_page(self, template: str, **kwargs: Any) -> None:
        """Render ``template`` with what every page needs."""
        self.render(
            template,
            base_url=self.hub.base_url.rstrip("/") + "/",
            version=self.hub.version,
            mode=self.hub.authenticator.mode,
            user=self.current_user,
            xsrf=self.xsrf_token.decode(),
            **kwargs,
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, SessionError | AuthError | ApiError):
            detail = str(exc)
        else:
            detail = httputil.responses.get(status_code, "Error")
        trace = None
        if self.hub.debug and status_code >= 500 and "exc_info" in kwargs:
            trace = "".join(traceback.format_exception(*kwargs["exc_info"]))
        self.render_page(
            "error.html", title=f"{status_code}", status=status_code, detail=detail, trace=trace
        )


class UserPageHandler(PageHandler):
    """``GET /`` from a browser: the user's sessions and checkpoints.

    (``GET /`` asking for JSON is the compatible API's service identity, see
    :class:`~phoebe_spawner.handlers.api.RootHandler`, which hands browsers over here.)
    """

    async def get(self) -> None:
        now = time.time()
        sessions = [s.to_admin(now) for s in self.manager.list_for(self.user)]
        checkpoints: list[dict[str, Any]] = []
        if self.hub.checkpoints is not None:
            rows, _total = await self.hub.checkpoints.list(
                self.user, session_id=None, limit=50, offset=0
            )
            prefix = self.hub.base_url.rstrip("/")
            checkpoints = [checkpoint_to_api(row, prefix) for row in rows]
        self.render_page(
            "user.html",
            title="PHOEBE sessions",
            sessions=sorted(sessions, key=lambda d: d["created_at"]),
            checkpoints=checkpoints,
            now=now,
        )


class AdminPageHandler(PageHandler):
    """``GET /admin``: every user's sessions, live (admins only; others get 403)."""

    admin_only = True

    async def get(self) -> None:
        now = time.time()
        sessions = sorted(
            (s.to_admin(now) for s in self.manager.sessions.values()),
            key=lambda d: d["created_at"],
        )
        self.render_page(
            "admin.html",
            title="PHOEBE sessions: admin",
            sessions=sessions,
            capacity=self.manager.capacity(),
            now=now,
        )


class RootHandler(UserPageHandler):
    """``GET /``: the compatible API's service identity (JSON, no auth), or the user page
    for a browser (``Accept: text/html``)."""

    @property
    def is_page(self) -> bool:
        return wants_html(self.request.headers.get("Accept", ""))

    async def prepare(self) -> None:
        if self.is_page:
            await super().prepare()
        else:
            await BaseHandler.prepare(self)

    async def get(self) -> None:
        if self.is_page:
            await super().get()
            return
        self.set_header("Content-Type", "application/json")
        self.set_header("Content-Security-Policy", "default-src 'none'")
        self.write_json(
            {"service": "phoebe-spawner", "version": self.hub.version, "status": "running"}
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if self.is_page:
            super().write_error(status_code, **kwargs)
        else:
            BaseHandler.write_error(self, status_code, **kwargs)
