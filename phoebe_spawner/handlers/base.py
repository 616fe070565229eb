"""The base of every request handler: JSON in and out, errors as ``{"detail": ...}``.

Handlers stay thin: parse, authenticate in :meth:`BaseHandler.prepare`, call the
session manager or authenticator, serialize. Errors raised by those services
(:class:`~phoebe_spawner.errors.SessionError`,
:class:`~phoebe_spawner.auth.base.AuthError`) carry their status and detail and are
written here (a :class:`~phoebe_spawner.errors.SessionGone` adds its ``reason`` and
``checkpoint_id``); the access log (``web.log_request``) logs each request once, with
that detail; anything else is logged with its traceback and answered with a generic
500 (with the traceback only when the hub runs with ``--debug``).

Request bodies are streamed and counted, so an oversized body gets a JSON 413 without
being buffered.
"""

from __future__ import annotations

import math
import re
import traceback
from dataclasses import dataclass
from typing import Any

import orjson
from tornado import httputil
from tornado.http1connection import HTTP1Connection
from tornado.web import HTTPError, RequestHandler, stream_request_body

from phoebe_kernel_worker.protocol import DUPLICATE_COMMAND_ERROR, has_duplicate_command

from ..auth.base import TOKEN_COOKIE, Authenticator, AuthError, User
from ..errors import SessionError
from ..sessions.manager import SessionManager
from ..store import DatabaseUnavailable, Store

#: request bodies larger than this may skip the hub's JSON parse (``command_request``)
FAST_PATH_BYTES = 256 * 1024
#: ``{"command": "name", ...`` at the start of a body (the shape clients send)
LEADING_COMMAND = re.compile(rb'\s*\{\s*"command"\s*:\s*"([A-Za-z_][A-Za-z0-9_]{0,63})"\s*[,}]')


class ApiError(HTTPError):
    """An error answered as ``{"detail": detail}`` with ``status``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status)
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


@dataclass
class HubContext:
    """What every handler receives (``initialize(hub=...)``): the hub's services."""

    manager: SessionManager
    authenticator: Authenticator
    store: Store
    version: str
    debug: bool = False
    max_body_size: int = 64 * 1024 * 1024
    base_url: str = "/"
    jobs: Any = None
    checkpoints: Any = None
    user_events: Any = None
    sse_keepalive: float = 15.0
    cookie_max_age_days: float = 1.0
    passbands: Any = None
    admin_events: Any = None
    metrics: Any = None
    #: whether /metrics needs an admin or the metrics token
    metrics_auth: bool = True
    metrics_token: str = ""


@stream_request_body
class BaseHandler(RequestHandler):
    """JSON API handler. Subclasses set ``auth_required = False`` for public routes."""

    auth_required = True
    hub: HubContext
    #: the detail of the error this request was answered with (for the access log)
    error_detail: str | None = None

    def initialize(self, hub: HubContext) -> None:
        self.hub = hub
        self._chunks: list[bytes] = []
        self._received = 0

    # --- headers and errors ------------------------------------------------------------

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        detail = str(exc) if isinstance(exc, SessionError | AuthError | ApiError) else None
        if detail is None:
            detail = httputil.responses.get(status_code, "Error")
            if isinstance(exc, HTTPError) and exc.log_message and status_code < 500:
                detail = exc.log_message % exc.args if exc.args else exc.log_message
        # send_error cleared the headers: set the ones this error needs here
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:  # whole seconds, rounded up: a retry after it is not too early
            self.set_header("Retry-After", str(max(1, math.ceil(retry_after))))
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="phoebe-spawner"')
        body_future = getattr(self.request, "_body_future", None)  # set when streamed
        if body_future is not None and not body_future.done():
            # answered before the streamed body was read: tornado closes the connection
            # after this response (the only way not to read the rest), so say so
            self.set_header("Connection", "close")
        body: dict[str, Any] = {"detail": detail}
        if isinstance(exc, SessionError):
            body.update(exc.fields())
        self.error_detail = detail
        if self.hub.debug and status_code >= 500 and "exc_info" in kwargs:
            body["traceback"] = "".join(traceback.format_exception(*kwargs["exc_info"]))
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(body))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # an HTTPError (a client error, or a 5xx raised on purpose) is logged once, by
        # the access log with its detail; only unexpected exceptions get a traceback
        if isinstance(value, HTTPError):
            return
        super().log_exception(typ, value, tb)

    def _handle_request_exception(self, e: BaseException) -> None:
        # Service errors carry their own status and client-facing detail: answer them
        # here (the access log logs them once, with the detail), and leave the rest to
        # tornado.
        if isinstance(e, DatabaseUnavailable):
            e = ApiError(503, "Database unavailable, try again shortly")
        if isinstance(e, SessionError | AuthError | ApiError):
            status = e.status_code if isinstance(e, ApiError) else e.status
            if self._finished:
                return
            self.send_error(status, exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)

    # --- body -------------------------------------------------------------------------

    async def prepare(self) -> None:
        length = self.request.headers.get("Content-Length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                raise ApiError(400, "Invalid Content-Length header") from None
            if size > self.hub.max_body_size:
                raise ApiError(
                    413,
                    f"Request body of {size} bytes exceeds the limit of {self.hub.max_body_size}",
                )
        if isinstance(self.request.connection, HTTP1Connection):
            # a chunked body that grows past the limit is cut off while it streams
            self.request.connection.set_max_body_size(self.hub.max_body_size)
        if self.auth_required:
            self.current_user = await self.hub.authenticator.authenticate(self)

    def data_received(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received > self.hub.max_body_size:
            raise ApiError(413, f"Request body exceeds the limit of {self.hub.max_body_size} bytes")
        self._chunks.append(chunk)

    @property
    def body(self) -> bytes:
        if len(self._chunks) != 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0]

    def json_body(self, *, allow_empty: bool = False) -> Any:
        """The parsed JSON body; 400 if it is not JSON (``None`` for an allowed empty body)."""
        body = self.body
        if not body.strip():
            if allow_empty:
                return None
            raise ApiError(400, "Request body must be JSON")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise ApiError(400, f"Malformed JSON body: {e.msg} at position {e.pos}") from None

    def has_json_content(self) -> bool:
        """Whether the request says ``Content-Type: application/json`` (any parameters)."""
        ctype = self.request.headers.get("Content-Type", "")
        return ctype.partition(";")[0].strip().lower() == "application/json"

    def require_json_content(self) -> None:
        """415 unless the body is declared JSON (the routes a cross-site form must not reach)."""
        if not self.has_json_content():
            raise ApiError(415, "Content-Type must be application/json")

    def command_request(self, *, fast: bool = False) -> str:
        """The ``command`` of a ``{"command": name, ...kwargs}`` body (400 otherwise).

        With ``fast`` (``/send``) a body over :data:`FAST_PATH_BYTES` that starts with its
        command is not parsed here: building its arrays as Python objects only to throw
        them away costs tens of ms per MB-sized upload. The worker parses it anyway and
        answers a malformed one with status ``bad_request``, which the caller turns into
        the same 400. A body naming ``command`` twice is refused (400) here, and by the
        worker for the bodies the hub does not parse: parsers disagree on which one counts.
        """
        if fast and len(self.body) > FAST_PATH_BYTES:
            match = LEADING_COMMAND.match(self.body)
            if match:
                return match.group(1).decode()
        request = self.json_body()
        if not isinstance(request, dict):
            raise ApiError(400, "Request body must be a JSON object with a 'command'")
        command = request.get("command")
        if not isinstance(command, str) or not command:
            raise ApiError(400, "Request body must name a 'command'")
        if has_duplicate_command(self.body):
            raise ApiError(400, f"Malformed JSON body: {DUPLICATE_COMMAND_ERROR}")
        return command

    # --- helpers ------------------------------------------------------------------------

    @property
    def user(self) -> User:
        user = self.current_user
        assert isinstance(user, User)
        return user

    def require_admin(self, detail: str = "Only admins may use this") -> None:
        """403 unless the authenticated user is an admin."""
        if not self.user.admin:
            raise ApiError(403, detail)

    @property
    def manager(self) -> SessionManager:
        return self.hub.manager

    def write_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY))

    def set_token_cookie(self, token: str) -> None:
        """Set the token cookie browsers use for GET streams (EventSource cannot send headers)."""
        self.set_cookie(
            TOKEN_COOKIE,
            token,
            path=self.hub.base_url,
            httponly=True,
            samesite="Strict",
            secure=self.request.protocol == "https",
            expires_days=self.hub.cookie_max_age_days,
        )

    def client_ip(self) -> str:
        return self.request.remote_ip or "unknown"


class NotFoundHandler(BaseHandler):
    """Any path the API does not serve: a JSON 404 (for every method)."""

    auth_required = False

    async def prepare(self) -> None:
        raise ApiError(404, f"Not found: {self.request.path}")
