"""The binary request body: numpy arrays as typed buffers beside the JSON (docs/api.md).

:meth:`~phoebe_spawner.client._base.ClientBase.send` calls :func:`encode` on a command's
request when the hub says it takes such bodies (``features`` of ``GET /health``). Each
numpy array of a plain numeric dtype and at least :data:`MIN_ELEMENTS` elements leaves
the JSON: its place holds ``{"__buffer__": i}`` and its bytes follow the JSON
unchanged, so the worker gets exactly these bits (NaN, -0.0 and denormals included) as
an array, without a JSON round trip. Smaller arrays, other dtypes and astropy
Quantities stay in the JSON (:func:`._convert.dumps`).

:func:`decode` reads a reply in the same format (asked for with ``Accept``: a
result's large arrays, e.g. ``get_value``'s fluxes, as buffers).

The body: ``b"PSF1"``, the header's length (u32, little-endian), the header
``{"json": J, "buffers": [{"dtype", "shape", "nbytes"}, ...]}``, the JSON part (J
bytes), the buffers back to back. Kept free of the hub's code: the client is its own
distribution (numpy and orjson only).
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson

from ._convert import dumps

__all__ = ["FEATURE", "MEDIA_TYPE", "MIN_ELEMENTS", "decode", "encode"]

#: the request's Content-Type
MEDIA_TYPE = "application/vnd.phoebe-spawner.frames"
#: what ``GET /health`` lists in ``features`` when the hub takes such bodies
FEATURE = "frames"
#: arrays with fewer elements stay in the JSON (a buffer costs a header entry and a frame)
MIN_ELEMENTS = 1024
#: the dtypes a buffer may have (little-endian; a big-endian array is converted first)
_DTYPES = {"f8", "f4", "i8", "i4", "b1"}
#: the hub's limits: buffers per request, dimensions per buffer
MAX_BUFFERS = 32
MAX_NDIM = 4
_MAGIC = b"PSF1"


def encode(request: dict[str, Any], min_elements: int = MIN_ELEMENTS) -> bytes | None:
    """The frames body for ``request``, or None when no array in it is worth a buffer.

    Raises TypeError, like :func:`._convert.dumps`, for values that cannot be sent.
    """
    arrays: list[np.ndarray] = []
    json_obj = _extract(request, arrays, min_elements, 0)
    if not arrays:
        return None
    json_part = dumps(json_obj)
    specs = [{"dtype": a.dtype.str, "shape": list(a.shape), "nbytes": a.nbytes} for a in arrays]
    header = orjson.dumps({"json": len(json_part), "buffers": specs})
    parts: list[Any] = [struct.pack("<4sI", _MAGIC, len(header)), header, json_part]
    parts += [a.data.cast("B") for a in arrays]
    return b"".join(parts)


def _extract(value: Any, arrays: list[np.ndarray], min_elements: int, depth: int) -> Any:
    """``value`` with each array worth a buffer replaced by a reference (appended to
    ``arrays``); everything else as it is."""
    if type(value) is np.ndarray:  # exactly: a Quantity (a subclass) keeps its own rules
        array = _as_buffer(value, min_elements)
        if array is None or len(arrays) >= MAX_BUFFERS:
            return value
        arrays.append(array)
        return {"__buffer__": len(arrays) - 1}
    if depth > 16:
        return value
    if isinstance(value, dict):
        return {k: _extract(v, arrays, min_elements, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple) and any(type(v) is np.ndarray for v in value):
        return [_extract(v, arrays, min_elements, depth + 1) for v in value]
    return value


def _as_buffer(array: np.ndarray, min_elements: int) -> np.ndarray | None:
    """A C-contiguous little-endian array with ``array``'s values, or None if it must
    stay in the JSON (too small, too many dimensions, a dtype buffers do not carry)."""
    if array.size < min_elements or not 1 <= array.ndim <= MAX_NDIM:
        return None
    if f"{array.dtype.kind}{array.dtype.itemsize}" not in _DTYPES:
        return None
    little = array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
    return np.ascontiguousarray(array, dtype=little)


def decode(data: bytes) -> Any:
    """The JSON of a frames reply with numpy arrays in place of its references.

    The arrays are writeable (they share one copy of the reply's bytes). Raises
    ValueError for a reply that does not add up.
    """
    prefix = struct.calcsize("<4sI")
    if len(data) < prefix:
        raise ValueError("truncated frames reply")
    magic, header_len = struct.unpack_from("<4sI", data)
    if magic != _MAGIC or prefix + header_len > len(data):
        raise ValueError("not a frames reply")
    header = orjson.loads(data[prefix : prefix + header_len])
    start = prefix + header_len
    body = orjson.loads(data[start : start + header["json"]])
    buffer = bytearray(data[start + header["json"] :])
    arrays, offset = [], 0
    for spec in header["buffers"]:
        if spec["dtype"] not in ("<f8", "<f4", "<i8", "<i4", "|b1"):
            raise ValueError(f"unexpected dtype {spec['dtype']!r} in a frames reply")
        dtype = np.dtype(spec["dtype"])
        count = int(np.prod(spec["shape"], dtype=np.int64))
        if count * dtype.itemsize != spec["nbytes"] or offset + spec["nbytes"] > len(buffer):
            raise ValueError("the buffers of a frames reply do not add up")
        array = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset)
        arrays.append(array.reshape(spec["shape"]))
        offset += spec["nbytes"]
    if offset != len(buffer):
        raise ValueError("the buffers of a frames reply do not add up")
    return _resolve(body, arrays)


def _resolve(value: Any, arrays: list[np.ndarray]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__buffer__"}:
            return arrays[value["__buffer__"]]
        return {k: _resolve(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, arrays) for v in value]
    return value
