"""The compatible API (``API.md``): health, auth, sessions, commands, passbands.

Paths, shapes and status codes here are a contract with the existing
``phoebe_client`` and PHOEBE Lab: do not rename. Each handler parses, lets the
base class authenticate, calls one service method and serializes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from ..auth.base import TOKEN_COOKIE, check_xsrf
from . import frames
from .base import ApiError, BaseHandler
from .routing import read_whole

#: what ``GET /health`` says the hub takes beyond the JSON API (the client library asks)
FEATURES = [frames.FEATURE]


class HealthHandler(BaseHandler):
    """``GET /health``: liveness, no auth.

    Always 200 while the hub serves requests (a database outage must not get a
    healthy hub restarted); ``{"status": "degraded", "database": "unavailable"}`` when
    the database does not answer within a second or refused work in the last 30 s.
    ``features`` lists what the hub takes beyond the JSON API (``frames``: ``/send``
    bodies with typed buffers), so a client knows before it sends one.
    """

    auth_required = False

    async def get(self) -> None:
        try:
            db_ok = await asyncio.wait_for(self.hub.store.ping(), 1.0)
        except TimeoutError:
            db_ok = False
        body: dict[str, Any] = {"status": "ok"}
        if not db_ok or self.hub.store.recently_unavailable():
            body = {"status": "degraded", "database": "unavailable"}
        body["features"] = FEATURES
        self.write_json(body)


class AuthConfigHandler(BaseHandler):
    """``GET /auth/config``: which auth mode clients must speak."""

    auth_required = False

    async def get(self) -> None:
        self.write_json({"mode": self.hub.authenticator.mode})


class RegisterHandler(BaseHandler):
    """``POST /auth/register`` (jwt mode): create an account, return a token.

    JSON bodies only (415 otherwise): a cross-site form can post ``text/plain`` or
    form-encoded bodies but not ``application/json`` without the browser asking first.
    """

    auth_required = False

    async def post(self) -> None:
        self.require_json_content()
        body = self.json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "Request body must be a JSON object")
        response = await self.hub.authenticator.register(body, client=self.client_ip())
        self.set_token_cookie(response["access_token"])
        self.write_json(response)


class LoginHandler(BaseHandler):
    """``POST /auth/login`` (jwt mode): exchange credentials for a token.

    JSON bodies only (415 otherwise), so another site cannot log a browser in to an
    account of its choosing (login CSRF) with a form.
    """

    auth_required = False

    async def post(self) -> None:
        self.require_json_content()
        body = self.json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "Request body must be a JSON object")
        response = await self.hub.authenticator.login(body, client=self.client_ip())
        self.set_token_cookie(response["access_token"])
        self.write_json(response)


class LogoutHandler(BaseHandler):
    """``POST /auth/logout``: forget the browser's token cookie (tokens expire on their own).

    Needs ``Content-Type: application/json`` or the page's XSRF token (the pages send
    the ``X-XSRFToken`` header), so another site cannot log a browser out.
    """

    auth_required = False

    async def post(self) -> None:
        if not self.has_json_content():
            check_xsrf(self)
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
    """``POST /dash/end-session/{id}``: stop one of the caller's sessions (body ignored).
    Answers once the session is ``stopping`` and its worker told to stop; the worker's
    exit and the slot's release follow."""

    async def post(self, session_id: str) -> None:
        await self.manager.end_session(self.user, session_id, wait=False)
        self.write_json({"success": True})


class SessionMemoryHandler(BaseHandler):
    """``GET /dash/session-memory`` (all of the caller's) and ``POST .../{id}`` (one)."""

    async def get(self) -> None:
        sessions = [s for s in self.manager.list_for(self.user) if s.status == "running"]
        values = await asyncio.gather(*(s.sample() for s in sessions))
        self.write_json({s.id: v for s, v in zip(sessions, values, strict=True)})

    async def post(self, session_id: str) -> None:
        session = self.manager.get_owned(self.user, session_id)
        self.write_json({"mem_used": await session.sample()})


class PortStatusHandler(BaseHandler):
    """``GET /dash/port-status``: capacity in the old port-pool shape; the whole hub's for
    an admin, only the caller's own sessions and limit for anyone else."""

    async def get(self) -> None:
        self.write_json(self.manager.capacity(None if self.user.admin else self.user))


class SendHandler(BaseHandler):
    """``POST /send/{id}``: route one command; the worker's reply is passed on verbatim.

    A body with numpy arrays as typed buffers (``Content-Type:
    application/vnd.phoebe-spawner.frames``), or a request that takes a result's arrays
    as buffers (that type in ``Accept``), goes to :func:`.frames.send`."""

    async def post(self, session_id: str) -> None:
        headers = self.request.headers
        if frames.is_frames(headers.get("Content-Type")) or frames.accepts_frames(
            headers.get("Accept")
        ):
            await frames.send(self, session_id)
            return
        command = self.command_request(fast=True)
        reply = await self.manager.send(self.user, session_id, self.body, command)
        if reply.status == "bad_request":  # a large body the hub did not parse itself
            raise ApiError(400, f"Malformed JSON body: {_worker_error(reply.content)}")
        self.set_status(200)
        self.finish(reply.content)


#: ``POST /send/{id}`` with a small body of known length (nearly every command): read
#: with the headers, where a streamed body costs several more event-loop turns
SmallSendHandler = read_whole(SendHandler)


class PassbandsHandler(BaseHandler):
    """``GET /system/passbands``: PHOEBE's installed passbands, grouped by set."""

    async def get(self) -> None:
        result: Any = await self.hub.passbands.get()
        self.write_json({"success": True, "result": result})


def _worker_error(content: bytes) -> str:
    """The ``error`` of a worker's ``bad_request`` reply (its fixed text if unreadable)."""
    try:
        error = orjson.loads(content).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        error = None
    return error if isinstance(error, str) else "request must be an object with a 'command'"
