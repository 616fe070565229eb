"""Conversions between Python values and the hub's JSON, for the client.

Outgoing (:func:`dumps`): numpy arrays and scalars become JSON numbers and lists,
astropy units their strings; an astropy Quantity is refused here (only ``set_value``
takes one, and splits it into ``value`` and ``unit`` itself, see
:func:`split_quantity`).

Incoming: the worker sends numpy arrays as lists (NaN as ``null``) and quantities as
``{"value", "unit"}`` (see ``phoebe_kernel_worker.serialize``). :func:`numeric_array`
turns lists of numbers back into numpy arrays and :func:`quantities` turns
``{"value", "unit"}`` objects into astropy Quantities. astropy is imported lazily, on the
first quantity; without astropy the dicts are returned unchanged. Called by
:class:`~phoebe_spawner.client.PhoebeClient` on command results.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import orjson

__all__ = [
    "dumps",
    "model_arrays",
    "numeric_array",
    "quantities",
    "solution_arrays",
    "split_quantity",
]

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(obj: Any) -> bytes:
    """Encode a request body (command arguments may hold numpy values); TypeError says
    which value cannot be sent."""
    try:
        return orjson.dumps(obj, default=_default, option=_OPTIONS)
    except orjson.JSONEncodeError as exc:
        raise TypeError(str(exc.__cause__ or exc)) from None


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):  # non-contiguous or an unusual dtype
        if _is_quantity(obj):
            raise TypeError(
                "astropy Quantities are only accepted as set_value's value; "
                "pass plain numbers in the parameter's unit"
            )
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if _is_astropy_unit(obj):
        return str(obj)
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    raise TypeError(f"cannot send a {type(obj).__name__} to the hub")


def _is_quantity(obj: Any) -> bool:
    return any(
        c.__module__.startswith("astropy") and c.__name__ == "Quantity" for c in type(obj).__mro__
    )


def _is_astropy_unit(obj: Any) -> bool:
    return any(
        c.__module__.startswith("astropy") and c.__name__ == "UnitBase" for c in type(obj).__mro__
    )


def split_quantity(value: Any) -> tuple[Any, str | None]:
    """``(value, unit string)`` for an astropy Quantity, else ``(value, None)``."""
    if _is_quantity(value):
        magnitude = value.value
        if isinstance(magnitude, np.ndarray):
            magnitude = magnitude.tolist() if magnitude.ndim else magnitude.item()
        return magnitude, str(value.unit)
    return value, None


def _is_number(x: Any) -> bool:
    return x is None or (isinstance(x, int | float) and not isinstance(x, bool))


def numeric_array(value: Any) -> Any:
    """A numpy array for a non-empty (nested, rectangular) list of numbers, else ``value``.

    ``null`` (the worker's NaN/inf) becomes NaN; a list of plain integers gives an
    integer array, anything with a float or ``null`` a float64 array.
    """
    if not isinstance(value, list) or not value:
        return value
    flat = _flatten(value)
    if flat is None or not flat or not all(_is_number(x) for x in flat):
        return value
    if all(type(x) is int for x in flat):
        try:
            return np.array(value, dtype=np.int64)
        except (ValueError, OverflowError):
            return value
    try:
        return np.array(_nan_for_none(value), dtype=np.float64)
    except ValueError:  # ragged
        return value


def _flatten(value: list[Any]) -> list[Any] | None:
    """All leaves of a nested list, or None when it mixes lists and scalars at a level."""
    if all(isinstance(x, list) for x in value):
        out: list[Any] = []
        for sub in value:
            leaves = _flatten(sub)
            if leaves is None:
                return None
            out.extend(leaves)
        return out
    if any(isinstance(x, list | dict) for x in value):
        return None
    return value


def _nan_for_none(value: Any) -> Any:
    if isinstance(value, list):
        return [_nan_for_none(x) for x in value]
    return math.nan if value is None else value


@functools.cache
def _units() -> Any:
    """``astropy.units``, or None when astropy is not installed (imported once, lazily)."""
    try:
        import astropy.units as u
    except ImportError:
        return None
    return u


def _as_quantity(obj: dict[str, Any]) -> Any:
    u = _units()
    if u is None:
        return obj
    try:
        unit = u.Unit(obj["unit"])
    except (ValueError, TypeError):
        return obj
    value = numeric_array(obj["value"])
    if value is None:
        value = math.nan
    if not isinstance(value, np.ndarray | int | float):
        return obj
    return u.Quantity(value, unit)


def quantities(obj: Any) -> Any:
    """Replace every ``{"value": v, "unit": str}`` object in ``obj`` (recursively) by an
    astropy Quantity; without astropy, ``obj`` is returned as it is."""
    if isinstance(obj, dict):
        if set(obj) == {"value", "unit"} and isinstance(obj["unit"], str):
            return _as_quantity(obj)
        return {k: quantities(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [quantities(x) for x in obj]
    return obj


def model_arrays(result: Any) -> Any:
    """``run_compute``'s ``{"model": {ds: {name: list}}}`` with every list as an array."""
    if not isinstance(result, dict) or not isinstance(result.get("model"), dict):
        return result
    model = {
        ds: {name: numeric_array(v) for name, v in arrays.items()}
        if isinstance(arrays, dict)
        else arrays
        for ds, arrays in result["model"].items()
    }
    return {**result, "model": model}


def solution_arrays(result: Any) -> Any:
    """``run_solver``'s solution with ``initial_values``/``fitted_values`` as arrays."""
    if not isinstance(result, dict) or not isinstance(result.get("solution"), dict):
        return result
    solution = dict(result["solution"])
    for key in ("initial_values", "fitted_values"):
        solution[key] = numeric_array(quantities(solution.get(key)))
    return {**result, "solution": solution}
