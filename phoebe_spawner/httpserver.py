"""The hub's HTTP server: tornado's, with an explicit cap on open connections.

Past ``max_connections`` a new connection gets a short JSON 503 and is closed before
anything is parsed, so a flood of connections (or of idle event streams) cannot use
up the hub's file descriptors. Built by the app.
"""

from __future__ import annotations

import contextlib
import resource
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream, StreamClosedError

_BODY = b'{"detail": "Too many connections, try again shortly"}'
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY)
)


class CappedHTTPServer(HTTPServer):
    """An HTTPServer that refuses connections beyond ``max_connections`` (0: no cap)."""

    def initialize(self, *args: Any, max_connections: int = 0, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections
        self.refused = 0

    def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        if self.max_connections and len(self._connections) >= self.max_connections:
            self.refused += 1
            with contextlib.suppress(StreamClosedError):
                stream.write(BUSY).add_done_callback(lambda _: stream.close())
            return
        super().handle_stream(stream, address)


def raise_fd_limit(want: int) -> int:
    """Raise the soft open-files limit towards ``want`` (never past the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft
