"""HTTP plumbing for the client: one keep-alive connection, and event streams.

:class:`Transport` is created by :class:`~phoebe_spawner.client.PhoebeClient` and owns
one persistent ``http.client`` connection for ordinary calls (serialized by a lock, so
a client may be shared between threads, at the cost of calls waiting for each other)
and opens a separate connection for every Server-Sent Events stream
(:class:`EventStream`), so a job's progress can be read while the ordinary connection
stays free for the cancel request.

Reconnecting: before a kept-alive connection is reused it is checked for an end of
file (the hub closes idle connections after ``idle_connection_timeout``); a dropped
one is replaced before anything is sent. If a request still fails on a reused
connection, a *safe* request (GET, read-only commands) is sent once more on a fresh
connection; anything else is never resent blindly: the caller gets
:class:`HubConnectionError` with ``may_have_run=True``.
"""

from __future__ import annotations

import http.client
import select
import socket
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ._errors import HubConnectionError, HubTimeout, PhoebeClientError, error_for_status
from ._frames import MEDIA_TYPE as FRAMES_TYPE
from ._frames import decode as decode_frames

__all__ = ["EventStream", "Reply", "SSEEvent", "Transport"]

#: Sentinel for "use the transport's default read timeout".
DEFAULT: Any = object()


@dataclass(frozen=True)
class Reply:
    """A decoded 2xx answer: status, headers (lower-case names) and the JSON body."""

    status: int
    headers: Mapping[str, str]
    body: Any


@dataclass(frozen=True)
class SSEEvent:
    """One Server-Sent Event: ``id`` (int or None), ``event`` type and decoded ``data``."""

    id: int | None
    event: str
    data: Any


class Transport:
    """Requests against one hub base URL, with its auth header and timeouts.

    ``base_url`` is where the API lives (e.g. ``http://127.0.0.1:8001/`` or
    ``https://hub.example.org/services/phoebe/``); ``headers`` are sent with every
    request (the ``Authorization`` header among them, never logged);
    ``connect_timeout`` bounds connecting, ``read_timeout`` waiting for an answer
    (``None``: no limit).
    """

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        connect_timeout: float | None,
        read_timeout: float | None,
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = (parts.path or "/").rstrip("/") + "/"
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.headers = dict(headers)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        #: How many TCP connections this transport has opened (for tests and docs).
        self.connections_opened = 0
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ connections

    def url(self, path: str) -> str:
        """The request target for an API path relative to the base URL."""
        return self.prefix + path.lstrip("/")

    def _connect(self, read_timeout: float | None) -> http.client.HTTPConnection:
        """A new, connected HTTP connection (connect timeout, then the read timeout)."""
        conn: http.client.HTTPConnection
        if self.scheme == "https":
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.connect_timeout)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout)
        try:
            conn.connect()
        except TimeoutError as exc:
            conn.close()
            raise HubTimeout(f"timed out connecting to {self.origin}") from exc
        except OSError as exc:
            conn.close()
            raise HubConnectionError(f"cannot connect to {self.origin}: {exc}") from exc
        assert conn.sock is not None
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        conn.sock.settimeout(read_timeout)
        self.connections_opened += 1
        return conn

    @staticmethod
    def _dropped(conn: http.client.HTTPConnection) -> bool:
        """Whether an idle kept-alive connection was closed by the other side."""
        sock = conn.sock
        if sock is None:
            return True
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)  # an idle HTTP connection only turns readable at EOF

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        """Close the kept-alive connection (streams close themselves)."""
        with self._lock:
            self._discard()

    # ------------------------------------------------------------------ requests

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        safe: bool | None = None,
        timeout: Any = DEFAULT,
        expect: tuple[int, ...] = (200, 201, 202),
        decode: bool = True,
        content_type: str = "application/json",
        accept: str | None = None,
    ) -> Reply:
        """Send one request on the kept-alive connection and decode its JSON answer.

        ``safe`` (default: ``method == "GET"``) allows one resend on a fresh connection
        when a reused connection turns out to be broken. Non-2xx answers raise the
        matching :class:`PhoebeClientError`; network failures raise
        :class:`HubConnectionError` / :class:`HubTimeout`. ``decode=False`` leaves a
        successful answer's body as bytes; ``content_type`` is the body's, ``accept``
        replaces the ``Accept`` header (a frames answer is decoded too). Any other
        exception (such as KeyboardInterrupt) closes the connection, whose state is then
        unknown, and propagates.
        """
        if safe is None:
            safe = method == "GET"
        read_timeout = self.read_timeout if timeout is DEFAULT else timeout
        headers = dict(self.headers)
        if accept is not None:
            headers["Accept"] = accept
        if body is not None:
            headers["Content-Type"] = content_type
        elif method in ("POST", "PUT", "PATCH", "DELETE"):
            body = b""
        target = self.url(path)
        with self._lock:
            for attempt in (1, 2):
                reused = self._conn is not None
                if self._conn is not None and self._dropped(self._conn):
                    self._discard()
                    reused = False
                if self._conn is None:
                    self._conn = self._connect(read_timeout)
                conn = self._conn
                assert conn.sock is not None
                conn.sock.settimeout(read_timeout)
                try:
                    conn.request(method, target, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                except TimeoutError as exc:
                    self._discard()
                    raise HubTimeout(
                        f"no answer from {self.origin} within {read_timeout} s ({method} {path})",
                        may_have_run=not safe,
                    ) from exc
                except (OSError, http.client.HTTPException) as exc:
                    self._discard()
                    if reused and safe and attempt == 1:
                        continue
                    raise HubConnectionError(
                        f"connection to {self.origin} broke during {method} {path}: "
                        f"{type(exc).__name__}",
                        may_have_run=not safe,
                    ) from exc
                except BaseException:
                    self._discard()
                    raise
                if response.will_close:
                    self._discard()
                if not decode and response.status in expect:
                    headers = {k.lower(): v for k, v in response.getheaders()}
                    return Reply(response.status, headers, data)
                return _decode(response, data, expect)
        raise AssertionError("unreachable")  # pragma: no cover

    def open_stream(
        self, path: str, *, last_event_id: int | None, read_timeout: float | None
    ) -> EventStream:
        """Open an SSE stream on a new connection (resuming after ``last_event_id``)."""
        conn = self._connect(read_timeout)
        headers = dict(self.headers)
        headers["Accept"] = "text/event-stream"
        headers["Cache-Control"] = "no-cache"
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        try:
            conn.request("GET", self.url(path), headers=headers)
            response = conn.getresponse()
        except TimeoutError as exc:
            conn.close()
            raise HubTimeout(f"no answer from {self.origin} opening {path}") from exc
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise HubConnectionError(f"cannot open the event stream {path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        if response.status != 200:
            data = response.read()
            conn.close()
            _decode(response, data, (200,))
        return EventStream(conn, response)


def _decode(response: http.client.HTTPResponse, data: bytes, expect: tuple[int, ...]) -> Reply:
    """Turn an answer into a :class:`Reply`, or raise the error its status means."""
    headers = {k.lower(): v for k, v in response.getheaders()}
    body: Any = None
    if data and headers.get("content-type", "").startswith(FRAMES_TYPE):
        try:
            body = decode_frames(data)  # a result's arrays as typed buffers
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise PhoebeClientError(f"malformed frames answer: {exc}", response.status) from None
    elif data:
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError:
            body = None
    if response.status in expect:
        if body is None and data:
            raise PhoebeClientError(
                f"the hub answered {response.status} without JSON "
                f"({headers.get('content-type', 'no content type')})",
                response.status,
            )
        return Reply(response.status, headers, body)
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        detail = body["detail"]
    elif 300 <= response.status < 400:
        detail = (
            f"the hub redirected to {headers.get('location', '?')} (a login page?): "
            "check the URL and the token"
        )
    else:
        detail = f"HTTP {response.status} {response.reason}".strip()
    raise error_for_status(response.status, detail, headers.get("retry-after"), body)


class EventStream:
    """An open ``text/event-stream`` answer; iterate :meth:`events`, then :meth:`close`.

    Created by :meth:`Transport.open_stream`. ``events`` ends when the hub ends the
    stream; a broken connection raises :class:`HubConnectionError` (the caller resumes
    with ``Last-Event-ID``).
    """

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse):
        self._conn = conn
        self._response = response

    def events(self) -> Iterator[SSEEvent]:
        """Yield events as they arrive (comments and ``retry:`` lines are skipped)."""
        event_id: int | None = None
        event_type = "message"
        data: list[str] = []
        while True:
            try:
                raw = self._response.readline(1 << 24)
            except TimeoutError as exc:
                raise HubTimeout("the event stream went silent") from exc
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise HubConnectionError(f"the event stream broke: {type(exc).__name__}") from exc
            if not raw:
                return
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if not line:
                if data:
                    yield SSEEvent(event_id, event_type, _json_or_text("\n".join(data)))
                event_type, data = "message", []
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "id":
                event_id = int(value) if value.isdigit() else None
            elif field == "event":
                event_type = value
            elif field == "data":
                data.append(value)

    @property
    def socket(self) -> socket.socket | None:
        """The stream's socket (tests use it to break a stream on purpose)."""
        return self._conn.sock

    def close(self) -> None:
        self._conn.close()


def _json_or_text(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
