"""Typed buffers beside a command's JSON: what the hub and the worker both check.

A ``/send`` request may carry numpy arrays as raw little-endian buffers instead of JSON
lists (the ``application/vnd.phoebe-spawner.frames`` body, parsed by the hub in
``phoebe_spawner.handlers.frames``). The hub forwards the request's JSON unchanged as
the content frame of the ``execute_request`` and each buffer as one more frame after
it (signed with the rest: :meth:`~.messages.Signer.sign`); the header field
:data:`HEADER_FIELD` lists each buffer's dtype and shape. In the JSON, each array's
place holds a reference ``{"__buffer__": i}``. The worker
(``phoebe_kernel_worker.buffers``) checks the same things again and puts numpy arrays
in the references' places.

Pure (no numpy, no sockets): the hub has no numpy. What is checked here:

* each buffer's dtype is one of :data:`DTYPES` (little-endian f8, f4, i8, i4, bool),
  its shape a list of at most :data:`MAX_NDIM` non-negative integers, and its length
  ``prod(shape) * itemsize`` (:func:`spec_from_json`);
* at most :data:`MAX_BUFFERS` buffers per request;
* every buffer is referenced exactly once, and every reference names a buffer
  (:func:`resolve_references`).

A worker says it takes buffers by listing :data:`FEATURE` in its status reply's
``features``; the hub sends buffers only to such workers. The other way, a request
whose header sets :data:`ACCEPT_FIELD` gets the result's numeric arrays of at least
:data:`MIN_REPLY_ELEMENTS` elements as buffer frames of the reply, described the same
way (``phoebe_kernel_worker.serialize.dumps_with_buffers``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ACCEPT_FIELD",
    "DTYPES",
    "FEATURE",
    "HEADER_FIELD",
    "MAX_BUFFERS",
    "MAX_EXTENT",
    "MAX_NDIM",
    "MEDIA_TYPE",
    "MIN_REPLY_ELEMENTS",
    "REF_KEY",
    "BufferSpec",
    "Buffers",
    "FramesError",
    "resolve_references",
    "spec_from_json",
    "specs_from_json",
]

#: the HTTP content type of a request (and, asked for with ``Accept``, a reply) with buffers
MEDIA_TYPE = "application/vnd.phoebe-spawner.frames"
#: what a worker that takes buffers lists in its status reply's ``features``
FEATURE = "frames"
#: the ``execute_request`` header field listing the buffers' ``{"dtype", "shape"}``
HEADER_FIELD = "buffer_specs"
#: the ``execute_request`` header field asking for the result's arrays as buffers (true):
#: the reply then lists them in its own :data:`HEADER_FIELD`
ACCEPT_FIELD = "accept_buffers"
#: arrays of a result with fewer elements stay in the reply's JSON
MIN_REPLY_ELEMENTS = 1024
#: the key of a reference to a buffer in the JSON: ``{"__buffer__": index}``
REF_KEY = "__buffer__"
#: the dtypes a buffer may have (numpy's ``dtype.str``) and their item sizes
DTYPES: dict[str, int] = {"<f8": 8, "<f4": 4, "<i8": 8, "<i4": 4, "|b1": 1}
#: most buffers in one message (their specs must fit the protocol's 4 KiB header)
MAX_BUFFERS = 32
#: most dimensions of one buffer
MAX_NDIM = 4
#: largest extent of one dimension (keeps the header's specs short; element caps are lower)
MAX_EXTENT = 2**32
#: deepest nesting of the JSON searched for references (deeper: refused)
MAX_DEPTH = 64


class FramesError(ValueError):
    """A request whose buffers or references do not add up (a client error: 400)."""


@dataclass(frozen=True, slots=True)
class BufferSpec:
    """One buffer's dtype (a key of :data:`DTYPES`) and shape."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Length of the buffer in bytes."""
        return self.size * DTYPES[self.dtype]

    def to_json(self) -> dict[str, Any]:
        """The form :func:`spec_from_json` reads (what the hub puts in the header)."""
        return {"dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class Buffers:
    """A request's buffers as the hub forwards them (each one's spec and bytes, in
    order), and whether the reply may carry buffers too.

    Built by the hub's ``/send`` handler for a frames body or an ``Accept`` that names
    :data:`MEDIA_TYPE`; handed through the session to ``WorkerChannel.execute``, which
    sends ``data`` as frames after the content and :meth:`fields` in the header.
    """

    specs: tuple[BufferSpec, ...] = ()
    #: bytes-like objects (slices of the request body: never copied)
    data: tuple[Any, ...] = ()
    #: the client takes numpy arrays of the result as buffers (:data:`ACCEPT_FIELD`)
    reply_buffers: bool = False

    def fields(self) -> dict[str, Any]:
        """The header fields describing these buffers (and asking for buffers back)."""
        fields: dict[str, Any] = {}
        if self.specs:
            fields[HEADER_FIELD] = [spec.to_json() for spec in self.specs]
        if self.reply_buffers:
            fields[ACCEPT_FIELD] = True
        return fields


def spec_from_json(obj: Any, index: int) -> BufferSpec:
    """Check one ``{"dtype", "shape"[, "nbytes"]}`` object; ``index`` names it in errors."""
    if not isinstance(obj, dict):
        raise FramesError(f"buffer {index}: its description must be an object")
    dtype, shape = obj.get("dtype"), obj.get("shape")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise FramesError(
            f"buffer {index}: dtype {dtype!r} is not allowed (allowed: {', '.join(DTYPES)})"
        )
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= MAX_NDIM
        or not all(type(n) is int and 0 <= n <= MAX_EXTENT for n in shape)
    ):
        raise FramesError(
            f"buffer {index}: shape must be a list of 1 to {MAX_NDIM} integers from 0 to "
            f"{MAX_EXTENT}"
        )
    spec = BufferSpec(dtype, tuple(shape))
    nbytes = obj.get("nbytes", spec.nbytes)
    if type(nbytes) is not int or nbytes != spec.nbytes:
        raise FramesError(
            f"buffer {index}: nbytes {nbytes!r} does not match shape {list(shape)} of "
            f"{dtype} ({spec.nbytes} bytes)"
        )
    unknown = set(obj) - {"dtype", "shape", "nbytes"}
    if unknown:
        raise FramesError(f"buffer {index}: unknown fields {sorted(unknown)}")
    return spec


def specs_from_json(obj: Any) -> list[BufferSpec]:
    """Check a list of buffer descriptions (at most :data:`MAX_BUFFERS`)."""
    if not isinstance(obj, list):
        raise FramesError("the buffers must be described by a list")
    if len(obj) > MAX_BUFFERS:
        raise FramesError(f"{len(obj)} buffers is more than the limit of {MAX_BUFFERS}")
    return [spec_from_json(item, i) for i, item in enumerate(obj)]


def resolve_references(obj: Any, count: int, replace: Callable[[int], Any] | None = None) -> Any:
    """Check the ``{"__buffer__": i}`` references in parsed JSON ``obj``.

    Every reference must be exactly ``{"__buffer__": i}`` with ``0 <= i < count``, and
    each of the ``count`` buffers must be referenced exactly once. With ``replace``,
    returns ``obj`` with each reference replaced by ``replace(i)`` (the worker's arrays);
    without, returns ``obj`` unchanged (the hub only checks). Raises :class:`FramesError`.
    """
    seen: set[int] = set()

    def walk(value: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise FramesError("the request is nested too deeply")
        if isinstance(value, dict):
            if REF_KEY in value:
                index = value[REF_KEY]
                if len(value) != 1 or type(index) is not int:
                    raise FramesError(f'a reference must be {{"{REF_KEY}": index}}')
                if not 0 <= index < count:
                    raise FramesError(f"reference to buffer {index}, but there are {count}")
                if index in seen:
                    raise FramesError(f"buffer {index} is referenced more than once")
                seen.add(index)
                return replace(index) if replace is not None else value
            if replace is None:
                for item in value.values():
                    walk(item, depth + 1)
                return value
            return {key: walk(item, depth + 1) for key, item in value.items()}
        if isinstance(value, list):
            if replace is None:
                for item in value:
                    walk(item, depth + 1)
                return value
            return [walk(item, depth + 1) for item in value]
        return value

    result = walk(obj, 0)
    if len(seen) != count:
        unused = sorted(set(range(count)) - seen)
        raise FramesError(f"buffers {unused} are not referenced")
    return result
