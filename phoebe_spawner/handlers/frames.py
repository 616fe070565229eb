"""``POST /send/{id}`` with numpy arrays as typed buffers beside the JSON (docs/api.md).

A request with ``Content-Type: application/vnd.phoebe-spawner.frames`` (the client
library sends one when a call's arguments hold large arrays) has this body::

    b"PSF1"  u32 little-endian H  header (H bytes of JSON)  JSON part  buffer 0  buffer 1 ...

The header is ``{"json": J, "buffers": [{"dtype": "<f8", "shape": [n], "nbytes": 8n},
...]}``: the JSON part's length and each buffer's description
(:mod:`phoebe_kernel_worker.protocol.frames` lists what is allowed). The JSON part is
the ordinary request (``{"command": name, ...kwargs}``) with ``{"__buffer__": i}`` where
array ``i`` goes; the buffers follow back to back, and the lengths must add up to the
body's exactly.

:func:`parse_body` checks all of that (pure; unit-tested) without copying or reading
the buffers; :func:`send` (called by :class:`~.api.SendHandler`) then checks the
session: its worker must take buffers (415 otherwise: the client sends JSON instead)
and no array may have more elements than the worker's ``max_array_length``; the JSON
part and the buffers go to the worker as one signed message
(``WorkerChannel.execute``), which rebuilds the arrays and checks them again.
The body size limit (413) applies to the whole body, as for JSON.

The other way: a request whose ``Accept`` names the frames type (JSON body or not) asks
the worker for the result's large arrays as buffers; a reply that has some goes back in
the same format (:func:`reply_body`), anything else as the worker's JSON.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import orjson

from phoebe_kernel_worker.protocol import DUPLICATE_COMMAND_ERROR, has_duplicate_command
from phoebe_kernel_worker.protocol.frames import (
    FEATURE,
    HEADER_FIELD,
    MEDIA_TYPE,
    Buffers,
    FramesError,
    resolve_references,
    specs_from_json,
)
from phoebe_kernel_worker.protocol.limits import WorkerLimits

from .base import ApiError, BaseHandler

__all__ = [
    "MAGIC",
    "MEDIA_TYPE",
    "FramesBody",
    "FramesError",
    "accepts_frames",
    "is_frames",
    "parse_body",
    "reply_body",
    "send",
]

#: the first four bytes of a frames body (the format's version is its last byte)
MAGIC = b"PSF1"
_PREFIX = struct.Struct("<4sI")
#: longest envelope header (descriptions of at most MAX_BUFFERS buffers fit easily)
MAX_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class FramesBody:
    """A checked frames body: the JSON part, its command and the buffers (not copied)."""

    json: bytes
    command: str
    buffers: Buffers


def is_frames(content_type: str | None) -> bool:
    """Whether a request's ``Content-Type`` is the frames type (any parameters)."""
    return content_type is not None and content_type.partition(";")[0].strip().lower() == MEDIA_TYPE


def parse_body(body: bytes) -> FramesBody:
    """Check a frames body's envelope, lengths, JSON part and references.

    Raises :class:`FramesError` (a 400) for a truncated body, lengths that do not add
    up, a description or dtype not allowed, more buffers than the limit, a JSON part
    that is not a ``{"command": ...}`` object, and references out of range, repeated or
    missing. The buffers are sliced out of ``body`` as memoryviews, never read.
    """
    if len(body) < _PREFIX.size:
        raise FramesError(f"truncated body: {len(body)} bytes, not even the envelope")
    magic, header_len = _PREFIX.unpack_from(body)
    if magic != MAGIC:
        raise FramesError(f"a frames body starts with {MAGIC!r}")
    if header_len > MAX_HEADER_BYTES:
        raise FramesError(f"envelope header of {header_len} bytes (at most {MAX_HEADER_BYTES})")
    start = _PREFIX.size + header_len
    if start > len(body):
        raise FramesError(f"truncated body: the envelope header needs {header_len} bytes")
    try:
        header = orjson.loads(body[_PREFIX.size : start])
    except orjson.JSONDecodeError:
        raise FramesError("the envelope header is not JSON") from None
    if not isinstance(header, dict) or set(header) != {"json", "buffers"}:
        raise FramesError('the envelope header must be {"json": length, "buffers": [...]}')
    json_len = header["json"]
    if type(json_len) is not int or json_len < 0:
        raise FramesError("the JSON part's length must be a non-negative integer")
    specs = specs_from_json(header["buffers"])
    expected = start + json_len + sum(spec.nbytes for spec in specs)
    if expected != len(body):
        raise FramesError(
            f"lengths do not add up: the envelope describes {expected} bytes, "
            f"the body has {len(body)}"
        )
    json_part = body[start : start + json_len]
    try:
        request = orjson.loads(json_part)
    except orjson.JSONDecodeError as e:
        raise FramesError(f"the JSON part is malformed: {e.msg} at position {e.pos}") from None
    command = request.get("command") if isinstance(request, dict) else None
    if not isinstance(command, str) or not command:
        raise FramesError("the JSON part must be an object naming a 'command'")
    if has_duplicate_command(json_part):
        raise FramesError(DUPLICATE_COMMAND_ERROR)
    resolve_references(request, len(specs))
    view = memoryview(body)
    data = []
    offset = start + json_len
    for spec in specs:
        data.append(view[offset : offset + spec.nbytes])
        offset += spec.nbytes
    return FramesBody(json_part, command, Buffers(tuple(specs), tuple(data)))


def accepts_frames(accept: str | None) -> bool:
    """Whether a request's ``Accept`` names the frames type (the result's arrays as
    buffers)."""
    return accept is not None and MEDIA_TYPE in accept.lower()


async def send(handler: BaseHandler, session_id: str) -> None:
    """Answer ``POST /send/{id}`` for a frames body, or a JSON body whose ``Accept`` names
    the frames type (called by the send handler).

    The worker's reply is passed on verbatim, like the JSON path's; a worker that
    refuses the buffers (``bad_request``) gets a 400 with its reason. A reply with
    buffers (asked for with ``Accept``) goes out as a frames body (:func:`reply_body`).
    """
    frames_body = is_frames(handler.request.headers.get("Content-Type"))
    if frames_body:
        try:
            request = parse_body(handler.body)
        except FramesError as e:
            raise ApiError(400, f"Malformed frames body: {e}") from None
        body, command, sent = request.json, request.command, request.buffers
    else:
        body, command, sent = handler.body, handler.command_request(fast=True), Buffers()
    session = await handler.manager.find(handler.user, session_id)
    session.check_running()
    takes_frames = session.channel is not None and FEATURE in session.channel.features
    if sent.specs and not takes_frames:
        raise ApiError(415, f"This session's worker does not take {MEDIA_TYPE} bodies: send JSON")
    limit = WorkerLimits.from_mapping(session.spawner.worker_limits).max_array_length
    for i, spec in enumerate(sent.specs):
        if spec.size > limit:
            raise ApiError(
                400,
                f"buffer {i}: an array of {spec.size} elements is above this service's "
                f"limit of {limit}",
            )
    accept = takes_frames and accepts_frames(handler.request.headers.get("Accept"))
    buffers = Buffers(sent.specs, sent.data, accept) if sent.specs or accept else None
    reply = await handler.manager.send(handler.user, session_id, body, command, buffers=buffers)
    if reply.status == "bad_request":
        what = "frames" if frames_body else "JSON"
        raise ApiError(400, f"Malformed {what} body: {_worker_error(reply.content)}")
    handler.set_status(200)
    if not reply.buffers:
        handler.finish(reply.content)
        return
    handler.set_header("Content-Type", MEDIA_TYPE)
    for part in reply_body(reply.header, reply.content, reply.buffers):
        handler.write(part)
    handler.finish()


def reply_body(header: dict[str, Any], content: bytes, buffers: list[bytes]) -> list[bytes]:
    """The parts of a frames reply: the envelope (as for requests) around the worker's
    JSON and buffers, after checking the worker's descriptions of them (a worker is not
    trusted: a reply that does not add up is a 502)."""
    try:
        specs = specs_from_json(header.get(HEADER_FIELD))
        if len(specs) != len(buffers) or any(
            spec.nbytes != len(data) for spec, data in zip(specs, buffers, strict=False)
        ):
            raise FramesError("its buffers do not match their descriptions")
    except FramesError as e:
        raise ApiError(502, f"The worker's reply is malformed: {e}") from None
    described = [{**spec.to_json(), "nbytes": spec.nbytes} for spec in specs]
    envelope = orjson.dumps({"json": len(content), "buffers": described})
    return [_PREFIX.pack(MAGIC, len(envelope)), envelope, content, *buffers]


def _worker_error(content: bytes) -> str:
    """The ``error`` of a worker's ``bad_request`` reply (a fixed text if unreadable)."""
    try:
        error = orjson.loads(content).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        error = None
    return error if isinstance(error, str) else "the worker refused the buffers"
