"""Routing by body size: small requests are read whole, large ones streamed.

Every route has two handler classes. A request whose body is small and of known length
(nearly every API call; a GET has none) goes to the *read-whole* twin, which tornado
runs after reading the body with the headers. Anything else (large, chunked or unsized
bodies) goes to the *streamed* class, which authenticates before the body arrives and
counts it against the size limit while it streams.

Why it matters beyond speed: an error answered before a body is read leaves unread
bytes on the connection, so tornado must close it. The read-whole twin answers every
error with the connection still clean, so a client that reuses it (``requests.Session``,
browsers) never meets a reset; the streamed class says ``Connection: close`` when it
answers early (see :meth:`BaseHandler.write_error`). Used by :func:`handlers.routes`.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from tornado import httputil
from tornado.routing import PathMatches

#: bodies up to this size are read with the headers instead of streamed
SMALL_BODY = 64 * 1024


def is_small(request: httputil.HTTPServerRequest, limit: int = SMALL_BODY) -> bool:
    """Whether ``request``'s body is of known length up to ``limit`` (none counts)."""
    headers = request.headers
    if "Transfer-Encoding" in headers:
        return False  # chunked: unknown length (tornado refuses it with a length anyway)
    length = headers.get("Content-Length")
    if length is None:
        return True  # no body at all
    return length.isdigit() and int(length) <= limit


class SmallBody(PathMatches):
    """Route matcher: ``pattern``, for requests whose body is small (:func:`is_small`)."""

    def __init__(self, pattern: str, limit: int = SMALL_BODY) -> None:
        super().__init__(pattern)
        self.limit = limit

    def match(self, request: httputil.HTTPServerRequest) -> dict[str, Any] | None:
        if not is_small(request, self.limit):
            return None  # the cheap test first: this runs for every rule tried
        return super().match(request)


@cache
def read_whole(handler: type) -> type:
    """The read-whole twin of a streamed handler class (made once per class).

    The twin turns tornado's streaming off and reads :attr:`body` from the request
    that tornado has already read in full.
    """
    return type(
        f"Small{handler.__name__}",
        (handler,),
        {
            "__doc__": handler.__doc__,
            "__module__": handler.__module__,
            "_stream_request_body": False,  # what tornado's @stream_request_body turns on
            "body": property(lambda self: self.request.body),
        },
    )
