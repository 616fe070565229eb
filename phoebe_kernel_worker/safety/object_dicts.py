"""Dicts PHOEBE turns into objects: ``distl`` distributions and ``nparray`` arrays.

``distl.from_dict`` builds a distribution from a dict naming its class (its ``Function``
class imports arbitrary ``module.function`` paths and calls them); PHOEBE also pastes
distribution JSON into ``eval``-ed text as ``distl_from_json('...')``.
``nparray.from_dict`` looks the array class up by name and allocates what it describes
(``zeros`` of any shape).  :func:`validate_distl_dict` and :func:`validate_nparray_dict`
hold both to allow-lists.

Called on DistributionParameter and FloatArrayParameter values of a loaded bundle
(:mod:`phoebe_kernel_worker.safety.bundle`, strict) and by the run-time patches on
``distl.from_dict``/``from_json`` and ``nparray.from_dict``
(:mod:`phoebe_kernel_worker.safety.patches`, lenient: PHOEBE's own dicts may hold numpy
values and LaTeX labels).
"""

from __future__ import annotations

import math
from typing import Any

from phoebe_kernel_worker.errors import UnsafeInput
from phoebe_kernel_worker.safety.patterns import NPARRAY_KEY_RE, is_quote_safe
from phoebe_kernel_worker.safety.units import check_unit_string
from phoebe_kernel_worker.safety.values import BUNDLE_VALUES, MAX_STRING_LENGTH, check_plain_value

__all__ = ["MAX_GENERATED_ARRAY", "nparray_size", "validate_distl_dict", "validate_nparray_dict"]

#: Upper bound on the number of elements an ``nparray`` generator may produce.
MAX_GENERATED_ARRAY = 10_000_000

_DISTL_CLASSES = frozenset(
    {
        "Delta",
        "Delta_Around",
        "Gaussian",
        "Gaussian_Around",
        "Uniform",
        "Uniform_Around",
        "Histogram",
        "Samples",
        "Composite",
        "MVGaussian",
        "MVGaussianSlice",
        "MVHistogram",
        "MVHistogramSlice",
        "MVSamples",
        "MVSamplesSlice",
        "DistributionCollection",
    }
)
_NPARRAY_CLASSES = frozenset(
    {"array", "arange", "linspace", "logspace", "geomspace", "invspace", "full", "zeros", "ones"}
)


def validate_distl_dict(
    value: Any, where: str = "distribution", *, strict_strings: bool = True, depth: int = 0
) -> None:
    """Refuse distl dicts outside the allow-list of distribution classes.

    Used for DistributionParameter values of loaded bundles and (with
    ``strict_strings=False``) by the run-time guard on ``distl.from_dict``.
    ``Function`` (imports ``module.function`` paths and calls them) and any ``func`` key
    are refused.  With ``strict_strings`` every string except LaTeX labels must be
    quote-safe, because PHOEBE pastes distribution JSON (without the LaTeX labels) into
    ``eval``-ed text as ``distl_from_json('...')``.
    """
    if depth > 8:
        raise UnsafeInput(f"{where}: distribution nested too deeply")
    if isinstance(value, dict):
        if "distl" in value and value["distl"] not in _DISTL_CLASSES:
            raise UnsafeInput(f"{where}: distribution class {value['distl']!r} is not allowed")
        for key, item in value.items():
            if not isinstance(key, str) or not is_quote_safe(key) or key == "func":
                raise UnsafeInput(f"{where}: distribution key {key!r} is not allowed")
            if key == "unit" and item is not None and (strict_strings or isinstance(item, str)):
                check_unit_string(item, f"{where}: distribution unit")
            latex = key in ("label_latex", "labels_latex")
            validate_distl_dict(
                item, where, strict_strings=strict_strings and not latex, depth=depth + 1
            )
    elif isinstance(value, list):
        if len(value) > MAX_GENERATED_ARRAY:
            raise UnsafeInput(f"{where}: distribution too large")
        if all(type(v) is float or type(v) is int for v in value):
            return
        for item in value:
            validate_distl_dict(item, where, strict_strings=strict_strings, depth=depth + 1)
    elif isinstance(value, str):
        if len(value) > MAX_STRING_LENGTH or (strict_strings and not is_quote_safe(value)):
            raise UnsafeInput(f"{where}: distribution strings may not contain quotes")
    elif strict_strings and not (value is None or isinstance(value, bool | int | float)):
        raise UnsafeInput(f"{where}: unsupported value in distribution")


def validate_nparray_dict(value: Any, where: str = "array", *, strict: bool = True) -> None:
    """Refuse nparray dicts of an unknown class or that would allocate huge arrays.

    ``strict`` (bundle JSON) also checks every key and value; the run-time guard on
    ``nparray.from_dict`` passes ``strict=False`` because PHOEBE's own dicts may hold
    numpy values.
    """
    if not isinstance(value, dict):
        raise UnsafeInput(f"{where}: array must be an object")
    kind = value.get("nparray")
    if kind not in _NPARRAY_CLASSES:
        raise UnsafeInput(f"{where}: array class {kind!r} is not allowed")
    for key, item in value.items() if strict else ():
        if not isinstance(key, str) or not NPARRAY_KEY_RE.fullmatch(key):
            raise UnsafeInput(f"{where}: array key {key!r} is not allowed")
        if key == "unit":
            if item is not None:
                check_unit_string(item, f"{where}: array unit")
        elif key != "nparray":
            check_plain_value(item, f"{where}: {key}", limits=BUNDLE_VALUES)
    if nparray_size(value) > MAX_GENERATED_ARRAY:
        raise UnsafeInput(f"{where}: array would have more than {MAX_GENERATED_ARRAY} elements")


def nparray_size(value: dict[str, Any]) -> float:
    """How many elements an nparray dict would allocate (inf when it cannot be told)."""
    kind = value["nparray"]
    try:
        if kind in ("linspace", "logspace", "geomspace", "invspace"):
            return float(value.get("num", 50))
        if kind == "arange":
            start, stop = float(value.get("start", 0)), float(value["stop"])
            step = float(value.get("step", 1))
            return abs((stop - start) / step) if step else math.inf
        if kind in ("full", "zeros", "ones"):
            shape = value.get("shape", 1)
            dims = shape if isinstance(shape, list) else [shape]
            return math.prod(float(d) for d in dims)
        return 0.0  # "array": the values are in the JSON already
    except (TypeError, ValueError, KeyError, OverflowError):
        return math.inf
