"""Turn command results into JSON bytes for the worker's replies.

The worker's main loop calls :func:`dumps` on every reply
(``dumps({"success": True, "result": result})``).  Results come straight from PHOEBE
and may hold numpy arrays and scalars, astropy quantities and units, tuples and
non-string dict keys; :func:`to_jsonable` maps them onto what :mod:`orjson` can dump.

Numeric numpy arrays are kept as C-contiguous ``float64``/``int64``/``bool`` arrays so
orjson's native numpy path (``OPT_SERIALIZE_NUMPY``) writes them without building Python
lists; orjson writes NaN and +/-inf as ``null`` both for numpy arrays and Python floats
(checked in ``tests/worker/test_serialize.py``).  Non-finite scalars are mapped to
``None`` here already so the structure returned by :func:`to_jsonable` is itself
JSON-clean.

This module must stay cheap to import: it never imports PHOEBE, and astropy is only
looked at when an object's type comes from an ``astropy`` module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from .protocol.frames import MAX_BUFFERS, REF_KEY

__all__ = ["DUMPS_OPTIONS", "dumps", "dumps_with_buffers", "to_jsonable"]

#: Options passed to :func:`orjson.dumps` by :func:`dumps`.
DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1


def dumps(obj: Any) -> bytes:
    """Serialize a reply (or any command result) to JSON bytes.

    Called by the worker's main loop for every reply it sends.  Non-finite floats
    become ``null``; unknown objects become their ``str()``.
    """
    return orjson.dumps(to_jsonable(obj), option=DUMPS_OPTIONS)


def dumps_with_buffers(obj: Any, min_elements: int) -> tuple[bytes, list[np.ndarray]]:
    """Serialize a reply with its numeric arrays of at least ``min_elements`` elements
    as buffers: the JSON holds ``{"__buffer__": i}`` in their places.

    Called by the worker's main loop for a request that asked for buffers
    (``protocol.frames.ACCEPT_FIELD``). The arrays are those :func:`to_jsonable` keeps:
    C-contiguous float64, int64 or bool, made little-endian; their bits travel as they
    are (NaN stays NaN, not ``null``). Returns the JSON bytes and the arrays in order.
    """
    arrays: list[np.ndarray] = []

    def extract(value: Any) -> Any:
        if type(value) is np.ndarray:
            if value.size < min_elements or len(arrays) >= MAX_BUFFERS or value.ndim > 4:
                return value
            if value.dtype.byteorder == ">":
                value = value.astype(value.dtype.newbyteorder("<"))
            arrays.append(value)
            return {REF_KEY: len(arrays) - 1}
        if type(value) is dict:
            return {key: extract(item) for key, item in value.items()}
        if type(value) is list:
            return [extract(item) for item in value]
        return value

    content = orjson.dumps(extract(to_jsonable(obj)), option=DUMPS_OPTIONS)
    return content, arrays


def to_jsonable(obj: Any) -> Any:
    """Return ``obj`` converted to values that ``orjson.dumps(..., DUMPS_OPTIONS)`` accepts.

    * ``None``, ``bool``, ``str`` and in-range ``int`` are returned unchanged;
    * ``float`` and numpy floating scalars: NaN/+-inf become ``None``;
    * numpy integer/bool/str scalars become the Python equivalents;
    * numpy arrays of a numeric or bool dtype become C-contiguous ``float64``,
      ``int64`` or ``bool`` arrays (0-d arrays become scalars); arrays of any other
      dtype (object, strings, complex, dates) become nested lists converted item by
      item;
    * astropy units become ``str(unit)``; quantities become
      ``{"value": ..., "unit": str(unit)}``;
    * mappings (keys converted with ``str`` unless already ``str``), lists, tuples and
      sets recurse and come back as ``dict``/``list``;
    * ``bytes`` are decoded as UTF-8 (invalid bytes replaced);
    * anything else becomes ``str(obj)``.
    """
    # Fast paths for the JSON-native scalars, checked by exact type first.
    tp = type(obj)
    if obj is None or tp is str or tp is bool:
        return obj
    if tp is int:
        return obj if _INT64_MIN <= obj <= _UINT64_MAX else str(obj)
    if tp is float:
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.ndarray):
        if tp is not np.ndarray and _is_astropy(tp):
            return _astropy_to_jsonable(obj)
        return _array_to_jsonable(obj)
    if isinstance(obj, np.generic):
        return _numpy_scalar_to_jsonable(obj)
    if isinstance(obj, Mapping):
        return {
            (key if isinstance(key, str) else _key_to_str(key)): to_jsonable(value)
            for key, value in obj.items()
        }
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(item) for item in obj]
    if isinstance(obj, str):
        return str.__str__(obj)
    if isinstance(obj, int):
        return to_jsonable(int(obj))
    if isinstance(obj, float):
        return to_jsonable(float(obj))
    if isinstance(obj, bytes | bytearray):
        return bytes(obj).decode("utf-8", errors="replace")
    if _is_astropy(tp):
        return _astropy_to_jsonable(obj)
    return str(obj)


def _key_to_str(key: Any) -> str:
    """Dict keys must be strings in JSON; numpy scalars are unwrapped first."""
    if isinstance(key, np.generic):
        key = key.item()
    return str(key)


def _is_astropy(tp: type) -> bool:
    """Whether ``tp`` is defined in astropy (checked without importing astropy)."""
    return any(klass.__module__.startswith("astropy") for klass in tp.__mro__[:-1])


def _astropy_to_jsonable(obj: Any) -> Any:
    """Convert an astropy unit or quantity; other astropy objects become ``str``."""
    import astropy.units as u

    if isinstance(obj, u.Quantity):
        return {"value": to_jsonable(obj.value), "unit": str(obj.unit)}
    if isinstance(obj, u.UnitBase):
        return str(obj)
    if isinstance(obj, np.ndarray):
        return _array_to_jsonable(np.asarray(obj))
    return str(obj)


def _numpy_scalar_to_jsonable(obj: np.generic) -> Any:
    """Convert a numpy scalar to the matching Python value (non-finite floats -> None)."""
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return to_jsonable(int(obj))
    if isinstance(obj, np.floating):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.str_):
        return str(obj)
    if isinstance(obj, np.bytes_):
        return bytes(obj).decode("utf-8", errors="replace")
    return to_jsonable(obj.item())


def _array_to_jsonable(arr: np.ndarray) -> Any:
    """Keep numeric arrays as numpy (orjson dumps them natively); list-ify the rest."""
    if isinstance(arr, np.ma.MaskedArray):
        if arr.dtype.kind in "fiu":
            arr = np.ma.filled(arr.astype(np.float64), np.nan)
        else:
            arr = np.asarray(np.ma.filled(arr.astype(object), None))
    if arr.ndim == 0:
        return to_jsonable(arr[()])
    kind = arr.dtype.kind
    if kind == "f":
        return np.ascontiguousarray(arr, dtype=np.float64)
    if kind == "b":
        return np.ascontiguousarray(arr, dtype=np.bool_)
    if kind == "i" or (kind == "u" and arr.dtype.itemsize < 8):
        return np.ascontiguousarray(arr, dtype=np.int64)
    if kind == "u" and (arr.size == 0 or int(arr.max()) <= np.iinfo(np.int64).max):
        return np.ascontiguousarray(arr, dtype=np.int64)
    # object, str, bytes, complex, datetime, huge uint64 ...: element by element
    return [_array_to_jsonable(sub) if arr.ndim > 1 else to_jsonable(sub) for sub in arr]
