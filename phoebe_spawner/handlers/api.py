"""The compatible API (``API.md``): health, auth, sessions, commands, passbands.

Paths, shapes and status codes here are a contract with the existing
``phoebe_client`` and PHOEBE Lab: do not rename. Each handler parses, lets the
base class authenticate, calls one service method and serializes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tornado import httputil
from tornado.routing import PathMatches

from ..auth.base import TOKEN_COOKIE
from .base import ApiError, BaseHandler


class HealthHandler(BaseHandler):
    """``GET /health``: liveness, no auth.

    Always 200 while the hub serves requests (a database outage must not get a
    healthy hub restarted); ``{"status": "degraded", "database": "unavailable"}`` when
    the database does not answer within a second or refused work in the last 30 s.
    """

    auth_required = False

    async def get(self) -> None:
        try:
            db_ok = await asyncio.wait_for(self.hub.store.ping(), 1.0)
        except TimeoutError:
            db_ok = False
        if db_ok and not self.hub.store.recently_unavailable():
            self.write_json({"status": "ok"})
        else:
            self.write_json({"status": "degraded", "database": "unavailable"})


class AuthConfigHandler(BaseHandler):
    """``GET /auth/config``: which auth mode clients must speak."""

    auth_required = False

    async def get(self) -> None:
        self.write_json({"mode": self.hub.authenticator.mode})


class RegisterHandler(BaseHandler):
    """``POST /auth/register`` (jwt mode): create an account, return a token."""

    auth_required = False

    async def post(self) -> None:
        body = self.json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "Request body must be a JSON object")
        response = await self.hub.authenticator.register(body)
        self.set_token_cookie(response["access_token"])
        self.write_json(response)


class LoginHandler(BaseHandler):
    """``POST /auth/login`` (jwt mode): exchange credentials for a token."""

    auth_required = False

    async def post(self) -> None:
        body = self.json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "Request body must be a JSON object")
        response = await self.hub.authenticator.login(body, client=self.client_ip())
        self.set_token_cookie(response["access_token"])
        self.write_json(response)


class LogoutHandler(BaseHandler):
    """``POST /auth/logout``: forget the browser's token cookie (tokens expire on their own)."""

    auth_required = False

    async def post(self) -> None:
        self.clear_cookie(TOKEN_COOKIE, path=self.hub.base_url)
        self.hub.authenticator.logout(self)
        self.write_json({"success": True})


class MeHandler(BaseHandler):
    """``GET /auth/me``: the caller (404 in mode none, which has no identities)."""

    async def get(self) -> None:
        if not self.hub.authenticator.has_identity:
            raise ApiError(404, "Not available in current auth mode")
        self.write_json(self.user.to_api())


class SessionsHandler(BaseHandler):
    """``GET /dash/sessions``: the caller's sessions by id."""

    async def get(self) -> None:
        self.write_json({s.id: s.to_api() for s in self.manager.list_for(self.user)})


class StartSessionHandler(BaseHandler):
    """``POST /dash/start-session``: start a worker; the body is optional metadata.

    With ``"checkpoint_id"`` in the metadata the session starts from that checkpoint.
    """

    async def post(self) -> None:
        meta = self.json_body(allow_empty=True)
        if meta is not None and not isinstance(meta, dict):
            raise ApiError(400, "Session metadata must be a JSON object (or empty, or null)")
        if meta and len(self.body) > 16 * 1024:
            raise ApiError(413, "Session metadata is limited to 16 KiB")
        kwargs = {
            "client_ip": self.client_ip(),
            "user_agent": self.request.headers.get("User-Agent"),
        }
        if meta and meta.get("checkpoint_id") is not None:
            if not isinstance(meta["checkpoint_id"], str):
                raise ApiError(400, "checkpoint_id must be a string")
            session = await self.hub.checkpoints.start_session(self.user, meta, **kwargs)
        else:
            session = await self.manager.start_session(self.user, meta, **kwargs)
        self.write_json(session.to_api())


class EndSessionHandler(BaseHandler):
    """``POST /dash/end-session/{id}``: stop one of the caller's sessions (body ignored)."""

    async def post(self, session_id: str) -> None:
        await self.manager.end_session(self.user, session_id)
        self.write_json({"success": True})


class SessionMemoryHandler(BaseHandler):
    """``GET /dash/session-memory`` (all of the caller's) and ``POST .../{id}`` (one)."""

    async def get(self) -> None:
        sessions = [s for s in self.manager.list_for(self.user) if s.status == "running"]
        values = await asyncio.gather(*(self.manager.sample(s) for s in sessions))
        self.write_json({s.id: v for s, v in zip(sessions, values, strict=True)})

    async def post(self, session_id: str) -> None:
        session = self.manager.get_owned(self.user, session_id)
        self.write_json({"mem_used": await self.manager.sample(session)})


class PortStatusHandler(BaseHandler):
    """``GET /dash/port-status``: capacity in the old port-pool shape; the whole hub's for
    an admin, only the caller's own sessions and limit for anyone else."""

    async def get(self) -> None:
        self.write_json(self.manager.capacity(None if self.user.admin else self.user))


class SendHandler(BaseHandler):
    """``POST /send/{id}``: route one command; the worker's reply is passed on verbatim."""

    async def post(self, session_id: str) -> None:
        command = self.command_request(fast=True)
        reply = await self.manager.send(self.user, session_id, self.body, command)
        if reply.status == "bad_request":  # a large body the hub did not parse itself
            raise ApiError(400, "Malformed JSON body: request must be an object with a 'command'")
        self.set_status(200)
        self.finish(reply.content)


class SmallSendHandler(SendHandler):
    """``POST /send/{id}`` with a small body of known length (nearly every command).

    Not streamed: tornado reads the body with the headers and runs the handler in one
    go, where a streamed body costs several more event-loop turns per request. Chosen
    by :class:`SmallBody`; large, chunked or unsized bodies go to :class:`SendHandler`.
    """

    _stream_request_body = False  # what tornado's @stream_request_body turns on

    @property
    def body(self) -> bytes:
        return self.request.body


class SmallBody(PathMatches):
    """Route matcher: ``pattern``, for requests whose Content-Length is at most ``limit``."""

    def __init__(self, pattern: str, limit: int) -> None:
        super().__init__(pattern)
        self.limit = limit

    def match(self, request: httputil.HTTPServerRequest) -> dict[str, Any] | None:
        length = request.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > self.limit:
            return None
        if "Transfer-Encoding" in request.headers:
            return None  # tornado refuses both together anyway; leave it to the full path
        return super().match(request)


class PassbandsHandler(BaseHandler):
    """``GET /system/passbands``: PHOEBE's installed passbands, grouped by set."""

    async def get(self) -> None:
        result: Any = await self.hub.passbands.get()
        self.write_json({"success": True, "result": result})
