"""The hub's tornado application: its routes, pages, static files, cookies and access log.

Built once by :meth:`PhoebeSpawnerApp.setup <phoebe_spawner.app.PhoebeSpawnerApp.setup>`
from the wired services (:class:`~phoebe_spawner.handlers.HubContext`); the app then
serves it with :class:`~phoebe_spawner.httpserver.CappedHTTPServer`. Nothing here holds
state of its own.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from tornado.log import access_log
from tornado.web import Application, RequestHandler

from ._data import share_dir
from .handlers import HubContext, NotFoundHandler, routes


def log_request(handler: RequestHandler) -> None:
    """Access log, one line per request: successes at debug level, client errors at info,
    server errors at error; an error's line ends with the detail the client was sent."""
    status = handler.get_status()
    level = logging.DEBUG if status < 400 else logging.INFO if status < 500 else logging.ERROR
    if not access_log.isEnabledFor(level):
        return  # the hot path: no summary formatted for a log nobody keeps
    ms = 1000.0 * handler.request.request_time()
    # the URI and address are the client's: bounded, so no request can flood the log
    detail = getattr(handler, "error_detail", None)
    if detail is None:
        access_log.log(level, "%d %.300s %.1fms", status, handler._request_summary(), ms)
    else:
        summary = handler._request_summary()
        access_log.log(level, "%d %.300s %.1fms: %.300s", status, summary, ms, detail)


def make_web_app(
    hub: HubContext, extra_routes: list[Any], *, secret: bytes, compress: bool
) -> Application:
    """The tornado application for ``hub``: ``extra_routes`` (the authenticator's, such as
    hub mode's OAuth callback) before the route table, which ends with a catch-all for
    unknown paths. Cookies are signed with a key derived from the hub ``secret``."""
    share = share_dir()
    base_url = hub.base_url
    return Application(
        [*extra_routes, *routes(hub, base_url)],
        default_handler_class=NotFoundHandler,
        default_handler_args={"hub": hub},
        log_function=log_request,
        debug=False,
        compress_response=compress,
        template_path=str(share / "templates"),
        static_path=str(share / "static"),
        static_url_prefix=f"{base_url}static/",
        cookie_secret=hmac.new(secret, b"phoebe-spawner cookies", "sha256").hexdigest(),
        xsrf_cookie_kwargs={"path": base_url, "httponly": True, "samesite": "Strict"},
    )
