"""The connection and session half of :class:`~phoebe_spawner.client.PhoebeClient`.

:class:`ClientBase` resolves the hub URL and credentials (see :mod:`._config`), logs in
when given an email and password, keeps the *current session* (set by
:meth:`ClientBase.start_session` or :meth:`ClientBase.set_session_id`; every command
may name another with ``session_id=``), sends commands with :meth:`ClientBase.send`,
saves, lists, fetches and deletes checkpoints (:meth:`ClientBase.checkpoint` and the
methods after it), and ends the sessions it started when it is closed. The PHOEBE
commands and jobs are added by the subclass in :mod:`._client`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlencode

from ._config import resolve_token, resolve_url
from ._convert import dumps
from ._errors import (
    AuthenticationError,
    PhoebeClientError,
    PhoebeError,
    SessionEnded,
    SessionNotFound,
)
from ._frames import FEATURE as FRAMES_FEATURE
from ._frames import MEDIA_TYPE as FRAMES_TYPE
from ._frames import encode as encode_frames
from ._http import Transport
from ._retry import with_retry_after

__all__ = ["ARRAY_RESULT_COMMANDS", "READ_ONLY_COMMANDS", "ClientBase", "client_version"]

log = logging.getLogger("phoebe_spawner.client")

#: Commands that change nothing: safe to send again after a broken connection.
READ_ONLY_COMMANDS = frozenset(
    {
        "ping",
        "get_value",
        "get_parameter",
        "get_datasets",
        "get_bundle",
        "save_bundle",
        "get_uniqueid",
        "is_parameter_constrained",
    }
)


#: Commands whose results may hold large arrays: asked for as typed buffers (``Accept``).
ARRAY_RESULT_COMMANDS = frozenset({"get_value", "run_compute", "run_solver"})


@functools.cache
def client_version() -> str:
    """The installed phoebe-spawner-client's version, for the User-Agent header.

    Its build takes it from ``phoebe_spawner/_version.py``, which the client does not
    ship (``phoebe_spawner`` may be a namespace package holding only the client).
    """
    try:
        return importlib.metadata.version("phoebe-spawner-client")
    except importlib.metadata.PackageNotFoundError:  # a source tree that did not install it
        return "unknown"


class ClientBase:
    """Connection, authentication, sessions and checkpoints; see :class:`PhoebeClient`."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        email: str | None = None,
        password: str | None = None,
        session_id: str | None = None,
        auto_session: bool = True,
        keep_sessions: bool = False,
        timeout: float | None = 300.0,
        connect_timeout: float | None = 10.0,
        command_timeout: float | None = None,
        auth_scheme: str | None = None,
        start_retries: int = 5,
        max_retry_wait: float = 30.0,
        binary_arrays: bool = True,
    ) -> None:
        self.url = resolve_url(url, os.environ)
        if (email is None) != (password is None):
            raise ValueError("pass both email= and password= to log in")
        if email is not None and token:
            raise ValueError("pass either token= or email=/password=, not both")
        token, scheme = resolve_token(token, auth_scheme, os.environ)
        if email is not None:
            token, scheme = None, "Bearer"
        #: The command timeout (seconds; None: wait for the hub's own 504).
        self.command_timeout = command_timeout
        #: Session starts the hub refused with a ``Retry-After`` are sent again after it,
        #: this many times at most, and never after a wait over ``max_retry_wait`` s.
        self.start_retries = start_retries
        self.max_retry_wait = max_retry_wait
        self.auto_session = auto_session
        self.keep_sessions = keep_sessions
        #: Send large numpy arrays in commands as typed buffers where the hub takes them.
        self.binary_arrays = binary_arrays
        self._hub_frames: bool | None = None  # asked once, from GET /health
        self._frames_refused: set[str] = set()  # sessions whose worker answered 415
        self._session_id = session_id
        self._started: list[str] = []
        self._auth_scheme = scheme
        #: The hub's auth mode when the client had to ask (no credentials given).
        self.auth_mode: str | None = None
        #: The logged-in user (email/password login only).
        self.user: dict[str, Any] | None = None
        headers = {
            "Accept": "application/json",
            "User-Agent": f"phoebe-spawner-client/{client_version()}",
        }
        self._http = Transport(
            self.url, headers, connect_timeout=connect_timeout, read_timeout=timeout
        )
        try:
            if email is not None:
                token = self._login(email, str(password))
            if token:
                self._http.headers["Authorization"] = f"{scheme} {token}"
            else:
                self._check_open_hub()
        except BaseException:
            self._http.close()
            raise

    def __repr__(self) -> str:
        auth = "none" if "Authorization" not in self._http.headers else self._auth_scheme
        name = type(self).__name__
        return f"{name}(url={self.url!r}, session_id={self._session_id!r}, auth={auth!r})"

    # ------------------------------------------------------------------ auth

    def _login(self, email: str, password: str) -> str:
        """``POST /auth/login`` (jwt mode); returns the access token."""
        try:
            reply = self._http.request(
                "POST", "auth/login", dumps({"email": email, "password": password})
            )
        except SessionNotFound:
            raise AuthenticationError(
                f"the hub at {self.url} has no logins (not in jwt mode): pass token= instead",
                404,
            ) from None
        token = reply.body.get("access_token") if isinstance(reply.body, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthenticationError("the hub's login answer has no access_token", reply.status)
        self.user = reply.body.get("user")
        return token

    def _check_open_hub(self) -> None:
        """Without credentials, make sure the hub needs none (``GET /auth/config``)."""
        mode = self._http.request("GET", "auth/config").body.get("mode")
        self.auth_mode = mode
        if mode != "none":
            hint = (
                "pass token= (inside JupyterHub JUPYTERHUB_API_TOKEN is used)"
                if mode == "hub"
                else "pass token= or email= and password="
            )
            raise AuthenticationError(
                f"the hub at {self.url} needs credentials (auth mode {mode!r}): {hint}", 401
            )

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """End the sessions this client started (unless ``keep_sessions``) and close the
        connection. Called by ``with`` on exit; the client may be used again after."""
        if not self.keep_sessions:
            for session_id in list(self._started):
                try:
                    self.end_session(session_id)
                except SessionNotFound:
                    self._forget(session_id)
                except PhoebeClientError as exc:
                    log.warning("could not end session %s: %s", session_id, exc)
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def connections_opened(self) -> int:
        """TCP connections opened so far for ordinary calls and streams."""
        return self._http.connections_opened

    # ------------------------------------------------------------------ sessions

    @property
    def session_id(self) -> str | None:
        """The current session: the one commands go to unless they name another."""
        return self._session_id

    def set_session_id(self, session_id: str | None) -> None:
        """Make ``session_id`` (an existing session of yours) the current session."""
        self._session_id = session_id

    def start_session(
        self,
        metadata: dict[str, Any] | None = None,
        *,
        project_name: str | None = None,
        checkpoint_id: str | None = None,
    ) -> dict[str, Any]:
        """Start a PHOEBE session and make it the current one; returns the session object
        (``session_id``, ``status``, ``project_name``, ...). ``checkpoint_id`` starts it
        from a saved checkpoint. A refusal with ``Retry-After`` (the start rate, a busy
        database) is waited out and the start sent again, up to ``start_retries`` times
        and ``max_retry_wait`` seconds a wait (see :mod:`._retry`); otherwise, and when
        those run out, raises LimitReached/RateLimited (429) or WorkerUnavailable (503)."""
        body = dict(metadata or {})
        if project_name is not None:
            body["project_name"] = project_name
        if checkpoint_id is not None:
            body["checkpoint_id"] = checkpoint_id
        session: dict[str, Any] = with_retry_after(
            lambda: self._http.request("POST", "dash/start-session", dumps(body)).body,
            retries=self.start_retries,
            cap=self.max_retry_wait,
            what="session start",
        )
        self._session_id = session["session_id"]
        self._started.append(session["session_id"])
        return session

    def end_session(self, session_id: str | None = None) -> dict[str, Any]:
        """End ``session_id`` (default: the current session) and stop its worker: the hub
        answers once the worker is told to stop (the session is ``stopping``, its
        commands answer 404) and reaps it after; it is listed until then."""
        sid = session_id or self._session_id
        if sid is None:
            raise PhoebeClientError("no session to end: none is current")
        try:
            result: dict[str, Any] = self._http.request("POST", f"dash/end-session/{sid}").body
        except SessionNotFound:
            self._forget(sid)
            raise
        self._forget(sid)
        return result

    def close_session(self) -> None:
        """End the current session, if there is one (the old client's name)."""
        if self._session_id is not None:
            self.end_session(self._session_id)

    def _forget(self, session_id: str) -> None:
        if session_id in self._started:
            self._started.remove(session_id)
        if self._session_id == session_id:
            self._session_id = None

    def get_sessions(self) -> dict[str, dict[str, Any]]:
        """Your sessions: ``{session_id: session}``."""
        sessions: dict[str, dict[str, Any]] = self._http.request("GET", "dash/sessions").body
        return sessions

    def get_memory_usage(self) -> dict[str, float]:
        """Memory (MiB) of each of your running sessions' workers."""
        usage: dict[str, float] = self._http.request("GET", "dash/session-memory").body
        return usage

    def get_port_status(self) -> dict[str, Any]:
        """The hub's capacity in the old port-pool shape."""
        status: dict[str, Any] = self._http.request("GET", "dash/port-status").body
        return status

    def get_passbands(self) -> dict[str, Any]:
        """Installed passbands: ``{"passbands": [...], "grouped": {set: [names]}}``."""
        reply = self._http.request("GET", "system/passbands").body
        return dict(reply.get("result") or {})

    def _sid(self, session_id: str | None) -> str:
        """The session a command goes to: explicit, current, or (auto_session) a new one."""
        if session_id:
            return session_id
        if self._session_id is None:
            if not self.auto_session:
                raise PhoebeClientError(
                    "no current session: call start_session() or pass session_id="
                )
            self.start_session()
        assert self._session_id is not None
        return self._session_id

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(
        self, name: str | None = None, *, session_id: str | None = None
    ) -> dict[str, Any]:
        """Save the session's bundle as a checkpoint on the hub; returns the checkpoint."""
        sid = self._sid(session_id)
        body = {"name": name} if name is not None else {}
        cp: dict[str, Any] = self._http.request(
            "POST", f"api/v1/sessions/{sid}/checkpoints", dumps(body)
        ).body
        return cp

    def restart_from_checkpoint(self, ended: SessionEnded) -> dict[str, Any]:
        """Start a new session from the checkpoint the hub saved when it ended a session
        (``ended``: the :class:`SessionEnded` a call raised) and make it the current one;
        returns the new session object, like :meth:`start_session`. Raises
        :class:`PhoebeClientError` if no checkpoint was saved at that end."""
        if ended.checkpoint_id is None:
            raise PhoebeClientError(
                f"no checkpoint was saved when the session ended ({ended.reason}): "
                "start_session() starts an empty one"
            )
        return self.start_session(checkpoint_id=ended.checkpoint_id)

    def list_checkpoints(
        self, *, session_id: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Your checkpoints, newest first (optionally those of one session)."""
        query = "?" + urlencode(
            {"limit": limit, **({"session_id": session_id} if session_id else {})}
        )
        reply = self._http.request("GET", f"api/v1/checkpoints{query}").body
        checkpoints: list[dict[str, Any]] = reply["checkpoints"]
        return checkpoints

    def get_checkpoint_bundle(self, checkpoint_id: str) -> str:
        """A checkpoint's bundle as PHOEBE JSON text."""
        reply = self._http.request(
            "GET", f"api/v1/checkpoints/{checkpoint_id}/bundle", decode=False
        )
        return bytes(reply.body).decode("utf-8")

    def delete_checkpoint(self, checkpoint_id: str) -> None:
        """Delete one of your checkpoints."""
        self._http.request("DELETE", f"api/v1/checkpoints/{checkpoint_id}")

    # ------------------------------------------------------------------ commands

    def send(self, command: str, *, session_id: str | None = None, **kwargs: Any) -> Any:
        """Run any worker command through ``POST /send/{id}`` and return its result.

        Raises PhoebeError when PHOEBE raised (``success: false``) and the HTTP errors
        (SessionNotFound, WorkerUnavailable, CommandTimeout, ...). Read-only commands
        are sent again once if a kept-alive connection broke; others never are. Large
        numpy arrays go as typed buffers (:meth:`_frames_body`), else all is JSON.
        """
        sid = self._sid(session_id)
        request = {**kwargs, "command": command}
        frames = self._frames_body(sid, request)
        takes_arrays = self._array_results(command) and self._hub_takes_frames()
        post = functools.partial(
            self._http.request,
            "POST",
            f"send/{sid}",
            safe=command in READ_ONLY_COMMANDS,
            timeout=self.command_timeout,
            accept=f"{FRAMES_TYPE}, application/json" if takes_arrays else None,
        )
        if frames is None:
            reply = post(dumps(request)).body
        else:
            try:
                reply = post(frames, content_type=FRAMES_TYPE).body
            except PhoebeClientError as exc:
                if exc.status != 415:  # 415: this session's worker takes JSON only
                    raise
                self._frames_refused.add(sid)
                reply = post(dumps(request)).body
        if not isinstance(reply, dict) or "success" not in reply:
            raise PhoebeClientError(f"unexpected answer to {command}: {reply!r}")
        if reply["success"] is not True:
            raise PhoebeError(str(reply.get("error") or "the command failed"), command)
        return reply.get("result")

    def _frames_body(self, sid: str, request: dict[str, Any]) -> bytes | None:
        """The binary body for ``request`` (numpy arrays as typed buffers, see
        :mod:`._frames`), or None to send JSON: no array large enough, ``binary_arrays``
        off, a hub that does not list ``frames`` in ``GET /health`` (asked once), or a
        session whose worker refused buffers before (415)."""
        if not self.binary_arrays or sid in self._frames_refused:
            return None
        body = encode_frames(request)
        if body is None:
            return None
        return body if self._hub_takes_frames() else None

    def _array_results(self, command: str) -> bool:
        """Whether ``command``'s large result arrays are asked for as typed buffers
        (commands that return arrays; the subclass adds its ``convert`` switch)."""
        return self.binary_arrays and command in ARRAY_RESULT_COMMANDS

    def _hub_takes_frames(self) -> bool:
        """Whether the hub lists ``frames`` in ``GET /health`` (asked once)."""
        if self._hub_frames is None:
            try:
                features = self._http.request("GET", "health").body.get("features")
            except (PhoebeClientError, AttributeError):
                features = None
            self._hub_frames = isinstance(features, list) and FRAMES_FEATURE in features
        return self._hub_frames
