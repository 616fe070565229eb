"""Mode ``hub``: phoebe-spawner runs as a JupyterHub service and JupyterHub says who is who.

API requests carry a JupyterHub token (``Authorization: token <t>`` or ``Bearer <t>``);
browsers go through JupyterHub's OAuth code flow (``HubOAuth`` and its callback
handler, served at ``<service prefix>/oauth_callback``) and then carry the service's
signed OAuth cookie. Tokens are checked against the hub's REST API with tornado's
async client (never blocking the loop) and the answers cached for ``cache_max_age``
seconds.

Access needs the service's access scope (``access:services!service=<name>``, which
JupyterHub passes in ``$JUPYTERHUB_OAUTH_ACCESS_SCOPES``); admin rights come from being
a hub admin (``allow_hub_admins``) or holding one of ``admin_scopes`` (a custom scope
such as ``custom:phoebe:admin``, granted through a JupyterHub role). Sessions are
owned by the hub user name.

Cookie-authenticated writes must pass the XSRF check (the page sends the
``X-XSRFToken`` header); token-authenticated requests need none.

An OAuth token keeps the scopes the user had when it was issued: a user given a scope
later (a TA added to ``phoebe-admins``) must log in to the service again, which
``<prefix>/relogin`` does (the 403 page links to it).
"""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar
from urllib.parse import urlencode, urlsplit

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, check_scopes
from tornado.web import HTTPError, RequestHandler
from traitlets import Bool, Float, Instance, List, Unicode, default

from .base import SAFE_METHODS, Authenticator, AuthError, User, check_xsrf


class ServiceOAuth(HubOAuth):
    """``HubOAuth`` without its global XSRF patch of tornado's ``RequestHandler``.

    JupyterHub's class patches ``check_xsrf_cookie`` on the nearest tornado base class of
    every handler it sees, which would change every tornado application in the process.
    phoebe-spawner's handlers check XSRF themselves (``BaseHandler``), so the patch is
    not needed.
    """

    def _patch_xsrf(self, handler: RequestHandler) -> None:
        return


class CallbackHandler(HubOAuthCallbackHandler):
    """``GET <prefix>/oauth_callback``: finishes the OAuth flow and sets the cookie.

    JupyterHub's handler, with errors rendered as JSON like the rest of the service.
    """

    def initialize(self, hub_auth: HubOAuth) -> None:
        self.hub_auth = hub_auth

    async def prepare(self) -> None:
        # JupyterHub's handler reads ``current_user`` synchronously, which would block the
        # loop on a request to the hub from a helper thread: look the user up here,
        # asynchronously, instead (a stale or missing login is simply no user).
        try:
            self.current_user = await self.hub_auth.get_user(self, sync=False)
        except HTTPError:
            self.current_user = None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        detail = exc.log_message if isinstance(exc, HTTPError) and exc.log_message else "Error"
        if status_code >= 500:
            detail = "Login through JupyterHub failed (see the service log)"
        self.set_header("Content-Type", "application/json")
        self.finish({"detail": detail})


class ReloginHandler(RequestHandler):
    """``GET <prefix>/relogin?next=<page>``: forget the service's OAuth cookie and go
    through JupyterHub's OAuth again, back to ``next`` (a page of this service, else the
    user page). The 403 page links here, because a token issued before the user got a
    scope never gains it. Harmless cross-site: it only logs the browser in again."""

    def initialize(self, authenticator: HubAuthenticator) -> None:
        self.authenticator = authenticator

    def get(self) -> None:
        prefix = self.authenticator.base_url
        target = self.get_argument("next", prefix)
        parts = urlsplit(target)
        if parts.scheme or parts.netloc or not parts.path.startswith(prefix):
            target = prefix  # only pages of this service, never another site
        self.authenticator.logout(self)
        self.redirect(self.authenticator.authorize_url(self, target))


class HubAuthenticator(Authenticator):
    """Users and tokens from the JupyterHub this service runs under."""

    mode: ClassVar[str] = "hub"

    service_name = Unicode(
        help="The service's name in JupyterHub. Default: $JUPYTERHUB_SERVICE_NAME."
    ).tag(config=True)

    @default("service_name")
    def _default_service_name(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_NAME", "")

    api_url = Unicode(help="JupyterHub's REST API URL. Default: $JUPYTERHUB_API_URL.").tag(
        config=True
    )

    @default("api_url")
    def _default_api_url(self) -> str:
        return os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")

    api_token = Unicode(
        help="""The service's own JupyterHub API token. Default: $JUPYTERHUB_API_TOKEN (set by
        JupyterHub for a managed service; set it yourself for an external one). Prefer the
        environment to a config file others might read."""
    ).tag(config=True)

    @default("api_token")
    def _default_api_token(self) -> str:
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    access_scopes = List(
        Unicode(),
        help="""Scopes a user needs to use this service (any one of them). Default:
        $JUPYTERHUB_OAUTH_ACCESS_SCOPES, else access:services!service=<service_name>.""",
    ).tag(config=True)

    @default("access_scopes")
    def _default_access_scopes(self) -> list[str]:
        env = os.environ.get("JUPYTERHUB_OAUTH_ACCESS_SCOPES")
        if env:
            return [str(s) for s in json.loads(env)]
        return [f"access:services!service={self.service_name}"]

    admin_scopes = List(
        Unicode(),
        ["custom:phoebe:admin"],
        help="""Scopes that make a user an admin of this service (any one of them). Define
        the custom scope in JupyterHub (c.JupyterHub.custom_scopes), grant it through a
        role, and add it to the service's oauth_client_allowed_scopes.""",
    ).tag(config=True)
    allow_hub_admins = Bool(True, help="Whether JupyterHub admins are admins here.").tag(
        config=True
    )
    cache_max_age = Float(
        60.0,
        help="""Seconds a token's check with JupyterHub is cached. A revoked token or a
        removed scope takes effect at the latest after this long.""",
    ).tag(config=True)
    base_url = Unicode("/", help="The service prefix (set by the app).")
    hub_auth = Instance(HubOAuth, allow_none=True, help="The HubOAuth helper (made in setup).")

    async def setup(self) -> None:
        if not self.api_token:
            raise ValueError(
                "auth mode hub needs the service's JupyterHub API token ($JUPYTERHUB_API_TOKEN)"
            )
        if not self.service_name:
            raise ValueError("auth mode hub needs the service name ($JUPYTERHUB_SERVICE_NAME)")
        kwargs: dict[str, Any] = {
            "api_token": self.api_token,
            "api_url": self.api_url,
            "base_url": self.base_url,
            "cache_max_age": int(self.cache_max_age),
            "access_scopes": set(self.access_scopes),
            "allow_token_in_url": False,
        }
        if not os.environ.get("JUPYTERHUB_CLIENT_ID"):
            kwargs["oauth_client_id"] = f"service-{self.service_name}"
        self.hub_auth = ServiceOAuth(parent=self, **kwargs)
        self.log.info(
            "auth mode hub: service %s, JupyterHub API %s, access %s",
            self.service_name,
            self.api_url,
            " or ".join(sorted(self.access_scopes)),
        )

    @property
    def oauth(self) -> HubOAuth:
        assert self.hub_auth is not None, "setup() was not called"
        return self.hub_auth

    async def authenticate(self, handler: RequestHandler) -> User:
        oauth = self.oauth
        has_token = bool(oauth.get_token(handler, in_cookie=False))
        unsafe = handler.request.method not in SAFE_METHODS
        if unsafe and not has_token and oauth._get_token_cookie(handler):
            check_xsrf(handler)
        try:
            model = await oauth.get_user(handler, sync=False)
        except HTTPError as e:
            # HubAuth raises 500/502 when JupyterHub cannot be asked
            self.log.error("checking credentials with JupyterHub failed: %s", e.log_message)
            raise AuthError(503, "JupyterHub is not reachable to check credentials") from None
        if not model:
            raise AuthError(
                401, "Not authenticated: send a JupyterHub token or log in through JupyterHub"
            )
        if model.get("kind", "user") != "user":
            raise AuthError(403, "Only JupyterHub users can use this service")
        scopes = set(model.get("scopes") or ())
        if not check_scopes(set(self.access_scopes), scopes):
            raise AuthError(
                403,
                f"Missing scope: access to this service needs {' or '.join(self.access_scopes)}",
            )
        return self.user_from_model(model, scopes)

    def user_from_model(self, model: dict[str, Any], scopes: set[str]) -> User:
        """phoebe-spawner's user for a JupyterHub user model."""
        name = str(model["name"])
        admin = (self.allow_hub_admins and bool(model.get("admin"))) or bool(
            check_scopes(set(self.admin_scopes), scopes)
        )
        return User(
            user_id=name,
            name=name,
            full_name=name,
            role="admin" if admin else "user",
            admin=admin,
            groups=tuple(str(g) for g in model.get("groups") or ()),
        )

    @property
    def hub_home_url(self) -> str:
        """JupyterHub's home page (the link back to the hub on every page)."""
        return f"{self.oauth.hub_host}{self.oauth.hub_prefix}home"

    def login_url(self, handler: RequestHandler) -> str | None:
        """Where a browser without a cookie goes: JupyterHub's OAuth authorize URL,
        returning to this page."""
        return self.authorize_url(handler, handler.request.uri or self.base_url)

    def authorize_url(self, handler: RequestHandler, next_url: str) -> str:
        """JupyterHub's OAuth authorize URL with a fresh state (stored in a cookie by
        ``handler``) and a PKCE challenge, returning to ``next_url``."""
        oauth = self.oauth
        params: dict[str, str] = {}
        code_verifier = None
        if oauth.pkce_enabled:
            code_verifier, challenge, method = oauth.generate_pkce_code_challenge()
            params["code_challenge"] = challenge
            params["code_challenge_method"] = method
        params["state"] = oauth.set_state_cookie(
            handler, next_url=next_url, code_verifier=code_verifier
        )
        login: str = oauth.login_url
        return f"{login}{'&' if '?' in login else '?'}{urlencode(params)}"

    def logout(self, handler: RequestHandler) -> None:
        """Forget the service's OAuth cookie (the JupyterHub login stays)."""
        self.oauth.clear_cookie(handler)

    def extra_routes(self, prefix: str) -> list[tuple[str, type, dict[str, Any]]]:
        """The OAuth callback and the log-in-again routes, under the service prefix."""
        base = prefix.rstrip("/")
        return [
            (base + "/oauth_callback", CallbackHandler, {"hub_auth": self.oauth}),
            (base + "/relogin", ReloginHandler, {"authenticator": self}),
        ]
