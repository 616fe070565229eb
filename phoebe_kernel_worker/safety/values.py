"""Plain values: the one walker that checks data PHOEBE will only store or convert.

Command arguments (``set_value``'s value, dataset arrays, compute options) and the
values of a loaded bundle's parameters must be plain JSON data: ``None``, bools,
numbers, bounded strings and lists of them, and dicts with short string keys only
where PHOEBE keeps them as data (a DictParameter).  Dicts are refused elsewhere because
PHOEBE turns them into objects (``nparray.from_dict``, ``distl.from_dict``) or treats
their keys as twigs.

:func:`check_plain_value` walks a value under a :class:`ValueLimits`:
:data:`COMMAND_VALUES` for command arguments (callers:
:mod:`~phoebe_kernel_worker.safety.arguments`, :mod:`~phoebe_kernel_worker.safety.edits`,
:mod:`~phoebe_kernel_worker.safety.runs`), :data:`BUNDLE_VALUES` for loaded bundles
(:mod:`~phoebe_kernel_worker.safety.bundle`,
:mod:`~phoebe_kernel_worker.safety.object_dicts`).  Array lengths are the cost caps'
business (:func:`phoebe_kernel_worker.safety.costs.check_array_lengths`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from phoebe_kernel_worker.errors import CommandError, UnsafeInput
from phoebe_kernel_worker.protocol.frames import DTYPES

__all__ = [
    "BUNDLE_VALUES",
    "COMMAND_VALUES",
    "MAX_DICT_KEY_LENGTH",
    "MAX_LIST_LENGTH",
    "MAX_STRING_LENGTH",
    "ValueLimits",
    "check_plain_value",
    "is_ndarray",
]

#: Longest string in a plain value.
MAX_STRING_LENGTH = 100_000
#: Longest list in a command argument (before the worker's ``max_array_length``).
MAX_LIST_LENGTH = 10_000_000
#: Longest dict key.
MAX_DICT_KEY_LENGTH = 1024


@dataclass(frozen=True)
class ValueLimits:
    """How far :func:`check_plain_value` lets a value go, and what it raises."""

    #: deepest nesting of lists and dicts
    max_depth: int
    #: longest list; None leaves lists to the cost caps
    max_list_length: int | None
    #: whether dicts may hold dicts (else only the top-level value may be a dict)
    nested_dicts: bool
    #: the exception raised: CommandError (a bad argument) or UnsafeInput (a refused bundle)
    error: type[CommandError]


#: Command arguments: shallow, bounded lists, a dict only at the top.
COMMAND_VALUES = ValueLimits(
    max_depth=4, max_list_length=MAX_LIST_LENGTH, nested_dicts=False, error=CommandError
)
#: Values of a loaded bundle's parameters: DictParameter values may nest dicts.
BUNDLE_VALUES = ValueLimits(max_depth=6, max_list_length=None, nested_dicts=True, error=UnsafeInput)


def is_ndarray(value: Any) -> bool:
    """Whether ``value`` is exactly a numpy array (as built from a request's buffers).

    Without importing numpy (it starts threads, and the worker's wall goes up first):
    while numpy is not imported, nothing can be an array.
    """
    numpy = sys.modules.get("numpy")
    return numpy is not None and type(value) is numpy.ndarray


def check_plain_value(
    value: Any,
    what: str,
    *,
    allow_dict: bool = False,
    limits: ValueLimits = COMMAND_VALUES,
    depth: int = 0,
) -> None:
    """Raise ``limits.error`` unless ``value`` is plain JSON data within ``limits``.

    Accepts ``None``, bools, numbers (finite or not), strings of at most
    :data:`MAX_STRING_LENGTH` characters and nested lists (tuples) of those; numpy
    arrays of the dtypes a request's buffers may have
    (:data:`phoebe_kernel_worker.protocol.frames.DTYPES`), each dimension counted as a
    level of nesting and all elements as the list length; dicts with
    string keys only if ``allow_dict`` (and, below the top, only if
    ``limits.nested_dicts``).  ``what`` names the value in the message.
    """
    if depth > limits.max_depth:
        raise limits.error(f"{what}: value nested too deeply")
    if value is None or isinstance(value, bool | int | float):
        return
    if isinstance(value, str):
        if len(value) > MAX_STRING_LENGTH:
            raise limits.error(f"{what}: string longer than {MAX_STRING_LENGTH} characters")
        return
    nested = allow_dict and limits.nested_dicts
    if is_ndarray(value):  # from a request's buffers (phoebe_kernel_worker.buffers)
        if value.dtype.str not in DTYPES:
            raise limits.error(f"{what}: arrays of {value.dtype} are not accepted")
        if depth + value.ndim - 1 > limits.max_depth:
            raise limits.error(f"{what}: value nested too deeply")
        if limits.max_list_length is not None and value.size > limits.max_list_length:
            raise limits.error(f"{what}: list too long")
        return
    if isinstance(value, list | tuple):
        if limits.max_list_length is not None and len(value) > limits.max_list_length:
            raise limits.error(f"{what}: list too long")
        if value and all(type(v) is float or type(v) is int for v in value):
            return
        for item in value:
            check_plain_value(item, what, allow_dict=nested, limits=limits, depth=depth + 1)
        return
    if isinstance(value, dict) and allow_dict:
        for key, item in value.items():
            if not isinstance(key, str) or len(key) > MAX_DICT_KEY_LENGTH:
                raise limits.error(f"{what}: dict keys must be short strings")
            check_plain_value(item, what, allow_dict=nested, limits=limits, depth=depth + 1)
        return
    raise limits.error(f"{what}: unsupported value of type {type(value).__name__}")
