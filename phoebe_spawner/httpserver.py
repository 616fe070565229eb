"""The hub's HTTP server: tornado's, with connection limits that one client cannot exhaust.

- ``max_connections``: open connections of all clients together. At the cap a new
  connection takes the place of the one that has waited longest for a request's headers
  (a connection that never finishes its headers, or an idle keep-alive one); only when
  every connection is in the middle of a request does the new one get a short JSON 503.
  So a flood of half-open connections, from however many addresses, cannot keep a
  legitimate request out: each legitimate connection sends its headers at once and is
  then never the one given up.
- ``max_connections_per_ip``: open connections of one client address (an IPv6 client by
  its /64); beyond it a new connection gets 429. Behind a trusted proxy
  (``xheaders``) every connection comes from the proxy, so the cap counts the requests
  in progress of each real client address (``X-Real-Ip`` / ``X-Forwarded-For``) instead.
- ``header_timeout``: seconds a new connection has to send its first request's headers,
  after which it gets 408 and is closed (between requests, tornado's
  ``idle_connection_timeout`` applies).
- ``body_timeout``: seconds a request's body may take to arrive after its headers, after
  which the connection is closed (the slow-body protection). One timer per request with
  a body, cancelled when the body is in: tornado's own ``body_timeout`` wraps every body
  read in a task, two event-loop turns more on every ``/send``.

Everything is decided before a request reaches the application. Built by the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tornado import httputil
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError
from tornado.log import gen_log
from tornado.netutil import is_valid_ip


def _response(status: str, detail: str, retry_after: int | None = 1) -> bytes:
    body = b'{"detail": "%s"}' % detail.encode()
    retry = b"Retry-After: %d\r\n" % retry_after if retry_after else b""
    return (
        b"HTTP/1.1 %s\r\nContent-Type: application/json\r\n%sConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (status.encode(), retry, len(body), body)
    )


BUSY = _response("503 Service Unavailable", "Too many connections, try again shortly")
TIMEOUT = _response("408 Request Timeout", "Request headers not received in time", None)
PER_IP_DETAIL = "Too many connections from your address (at most {}); close some and retry"


def address_key(ip: str) -> str:
    """The client a connection limit counts: an IPv4 address, or an IPv6 address's /64
    (what one host is usually given); anything else (a Unix socket) as it is."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return ip


def forwarded_ip(headers: httputil.HTTPHeaders, peer: str, trusted: list[str]) -> str:
    """The real client's address behind a proxy, by tornado's own ``xheaders`` rule: the
    last ``X-Forwarded-For`` entry that is not a ``trusted`` proxy, overridden by
    ``X-Real-Ip``; ``peer`` if that is not an address."""
    ip = peer
    for candidate in reversed(headers.get("X-Forwarded-For", peer).split(",")):
        ip = candidate.strip()
        if ip not in trusted:
            break
    ip = headers.get("X-Real-Ip", ip)
    return ip if is_valid_ip(ip) else peer


@dataclass(eq=False)
class _Conn:
    """What the server knows of one open connection."""

    stream: IOStream
    peer: str
    key: str
    #: still before its first request's headers (the header timeout applies)
    first: bool = True
    #: behind a trusted proxy: the client the request in progress is counted against
    client: str | None = None
    timer: Any = field(default=None, repr=False)
    #: the body timeout of the request in progress (None: no body, or it is in)
    body_timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class CappedHTTPServer(HTTPServer):
    """An HTTPServer with the global and per-address connection caps, the header
    timeout and the body timeout described in the module docstring (0 or None turns a
    cap or a timeout off)."""

    def initialize(
        self,
        *args: Any,
        max_connections: int = 0,
        max_connections_per_ip: int = 0,
        header_timeout: float = 0.0,
        body_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().initialize(*args, **kwargs)  # no body_timeout for tornado: ours, below
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout or 0.0
        self._open: dict[IOStream, _Conn] = {}
        #: the open connections waiting for a request's headers, longest-waiting first
        self._waiting: dict[IOStream, _Conn] = {}
        self._per_key: Counter[str] = Counter()  # open connections per address
        self._per_client: Counter[str] = Counter()  # requests in progress per real client
        #: connections turned away: all together, per address, given up at the global
        #: cap for a newer one, and closed for not sending their headers in time
        self.refused = 0
        self.refused_per_ip = 0
        self.evicted = 0
        self.timed_out = 0
        #: connections closed for not sending a request body within ``body_timeout``
        self.body_timed_out = 0

    # --- connections ----------------------------------------------------------------------

    def handle_stream(self, stream: IOStream, address: Any) -> None:
        peer = address[0] if isinstance(address, tuple) and address else str(address or "")
        key = address_key(str(peer))
        cap = self.max_connections_per_ip
        if cap and not self.xheaders and self._per_key[key] >= cap:
            self.refused_per_ip += 1
            self._refuse(stream, _response("429 Too Many Requests", PER_IP_DETAIL.format(cap)))
            return
        full = self.max_connections and len(self._open) >= self.max_connections
        if full and not self._evict_one():
            self.refused += 1
            self._refuse(stream, BUSY)
            return
        conn = _Conn(stream, str(peer), key)
        if self.header_timeout:
            conn.timer = IOLoop.current().call_later(self.header_timeout, self._expire, conn)
        self._open[stream] = self._waiting[stream] = conn
        self._per_key[key] += 1
        super().handle_stream(stream, address)

    def _refuse(self, stream: IOStream, response: bytes) -> None:
        with contextlib.suppress(StreamClosedError):
            stream.write(response).add_done_callback(lambda _: stream.close())

    def _evict_one(self) -> bool:
        """Close the connection that has waited longest for request headers (None: every
        connection is busy with a request)."""
        oldest = next(iter(self._waiting.values()), None)
        if oldest is None:
            return False
        self._forget(oldest)
        oldest.stream.close()
        self.evicted += 1
        return True

    def _expire(self, conn: _Conn) -> None:
        """Header timeout: a connection still without its first request's headers goes."""
        if conn.first and self._waiting.get(conn.stream) is conn:
            self._forget(conn)
            self.timed_out += 1
            self._refuse(conn.stream, TIMEOUT)

    def _forget(self, conn: _Conn) -> None:
        """Stop counting ``conn`` (closed, or about to be)."""
        if self._open.pop(conn.stream, None) is None:
            return
        self._waiting.pop(conn.stream, None)
        self._per_key[conn.key] -= 1
        if self._per_key[conn.key] <= 0:
            del self._per_key[conn.key]
        self._release_client(conn)
        self.body_done(conn)
        if conn.timer is not None:
            IOLoop.current().remove_timeout(conn.timer)
            conn.timer = None

    def _release_client(self, conn: _Conn) -> None:
        if conn.client is not None:
            self._per_client[conn.client] -= 1
            if self._per_client[conn.client] <= 0:
                del self._per_client[conn.client]
            conn.client = None

    def on_close(self, server_conn: object) -> None:
        stream = getattr(server_conn, "stream", None)
        conn = self._open.get(stream) if isinstance(stream, IOStream) else None
        if conn is not None:
            self._forget(conn)
        super().on_close(server_conn)

    # --- requests ---------------------------------------------------------------------------

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        """Called when a connection begins waiting for its next request's headers."""
        delegate = super().start_request(server_conn, request_conn)
        stream = getattr(server_conn, "stream", None)
        conn = self._open.get(stream) if isinstance(stream, IOStream) else None
        if conn is None:
            return delegate
        self._release_client(conn)  # the previous request on it is done
        self.body_done(conn)  # (its body too, even if the response came first)
        if not conn.first:  # (a first request waits, in order, since it was accepted)
            self._waiting.pop(conn.stream, None)
            self._waiting[conn.stream] = conn  # now the newest to wait
        return _Tracked(self, conn, delegate, request_conn)

    def request_started(self, conn: _Conn, headers: httputil.HTTPHeaders) -> bool:
        """Headers arrived on ``conn``: it is busy now. Behind a trusted proxy, whether its
        real client may have one more request in progress (else False: refused)."""
        self._waiting.pop(conn.stream, None)
        conn.first = False
        if conn.timer is not None:
            IOLoop.current().remove_timeout(conn.timer)
            conn.timer = None
        cap = self.max_connections_per_ip
        if not (self.xheaders and cap):
            return True
        trusted = list(self.trusted_downstream or [])
        client = address_key(forwarded_ip(headers, conn.peer, trusted))
        if self._per_client[client] >= cap:
            self.refused_per_ip += 1
            return False
        self._per_client[client] += 1
        conn.client = client
        return True

    def body_expected(self, conn: _Conn, headers: httputil.HTTPHeaders) -> None:
        """The request on ``conn`` goes on with a body: start its body timeout."""
        if not self.body_timeout:
            return
        length = headers.get("Content-Length")
        if (length is None or length == "0") and "Transfer-Encoding" not in headers:
            return  # no body: tornado reads none
        loop = asyncio.get_running_loop()
        conn.body_timer = loop.call_later(self.body_timeout, self._body_expired, conn)

    def body_done(self, conn: _Conn) -> None:
        """The body of the request on ``conn`` is in (or will never be): no timeout."""
        if conn.body_timer is not None:
            conn.body_timer.cancel()
            conn.body_timer = None

    def _body_expired(self, conn: _Conn) -> None:
        """Body timeout: the connection goes, as tornado's own ``body_timeout`` did it."""
        conn.body_timer = None
        if conn.stream.closed():
            return
        gen_log.info("Timeout reading body from %s", conn.peer)
        self.body_timed_out += 1
        conn.stream.close()


class _Tracked(httputil.HTTPMessageDelegate):
    """Wraps the application's delegate for one request: tells the server when the
    headers arrived, and answers 429 itself when the server refuses the request."""

    def __init__(
        self,
        server: CappedHTTPServer,
        conn: _Conn,
        delegate: httputil.HTTPMessageDelegate,
        request_conn: httputil.HTTPConnection,
    ) -> None:
        self.server = server
        self.conn = conn
        self.delegate = delegate
        self.request_conn = request_conn
        self.refused = False

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Any:
        if self.server.request_started(self.conn, headers):
            self.server.body_expected(self.conn, headers)
            return self.delegate.headers_received(start_line, headers)
        self.refused = True
        body = (
            b'{"detail": "%s"}'
            % PER_IP_DETAIL.format(self.server.max_connections_per_ip)
            .replace("connections", "requests")
            .encode()
        )
        self.request_conn.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", 429, "Too Many Requests"),
            httputil.HTTPHeaders(
                {
                    "Content-Type": "application/json",
                    "Content-Length": str(len(body)),
                    "Retry-After": "1",
                    "Connection": "close",
                }
            ),
            body,
        )
        self.request_conn.finish()
        return None

    def data_received(self, chunk: bytes) -> Any:
        if not self.refused:
            return self.delegate.data_received(chunk)
        return None

    def finish(self) -> None:
        self.server.body_done(self.conn)  # the whole body is in
        if not self.refused:
            self.delegate.finish()

    def on_connection_close(self) -> None:
        self.server.body_done(self.conn)
        if not self.refused:
            self.delegate.on_connection_close()
