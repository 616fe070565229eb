"""The one value walker (safety.values) under its two sets of limits.

Command arguments (COMMAND_VALUES) and loaded bundles (BUNDLE_VALUES) differ only in
the limits the walker is given: depth, list length, nested dicts and the error raised.
Pure: no PHOEBE.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from phoebe_kernel_worker.errors import CommandError, UnsafeInput
from phoebe_kernel_worker.safety.values import (
    BUNDLE_VALUES,
    COMMAND_VALUES,
    MAX_STRING_LENGTH,
    ValueLimits,
    check_plain_value,
)


def nested_lists(depth: int) -> Any:
    """``depth`` lists inside each other around a string (numeric lists stop the walk)."""
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("limits", [COMMAND_VALUES, BUNDLE_VALUES])
@pytest.mark.parametrize(
    "value",
    [None, True, 3, 2.5, float("nan"), "text", [1, 2.0], [[1, 2], ["a", None]], []],
)
def test_plain_values_pass(value: Any, limits: ValueLimits) -> None:
    check_plain_value(value, "v", limits=limits)


@pytest.mark.parametrize(
    ("limits", "error"), [(COMMAND_VALUES, CommandError), (BUNDLE_VALUES, UnsafeInput)]
)
def test_each_limit_raises_its_error(limits: ValueLimits, error: type[CommandError]) -> None:
    with pytest.raises(error, match=r"^v: unsupported value of type set$"):
        check_plain_value({1}, "v", limits=limits)
    with pytest.raises(error, match=r"^v: unsupported value of type dict$"):
        check_plain_value({"a": 1}, "v", limits=limits)
    with pytest.raises(error, match="string longer than"):
        check_plain_value("x" * (MAX_STRING_LENGTH + 1), "v", limits=limits)
    with pytest.raises(error, match="dict keys must be short strings"):
        check_plain_value({"k" * 1025: 1}, "v", allow_dict=True, limits=limits)


def test_depth_is_a_parameter() -> None:
    check_plain_value(nested_lists(COMMAND_VALUES.max_depth), "v")
    with pytest.raises(CommandError, match="nested too deeply"):
        check_plain_value(nested_lists(COMMAND_VALUES.max_depth + 1), "v")
    check_plain_value(nested_lists(BUNDLE_VALUES.max_depth), "v", limits=BUNDLE_VALUES)
    with pytest.raises(UnsafeInput, match="nested too deeply"):
        check_plain_value(nested_lists(BUNDLE_VALUES.max_depth + 1), "v", limits=BUNDLE_VALUES)


def test_only_bundles_nest_dicts() -> None:
    """A DictParameter value of a bundle may hold dicts; a command's dict argument may not."""
    nested = {"outer": {"inner": [1, "a"]}, "list": [{"k": None}]}
    check_plain_value(nested, "v", allow_dict=True, limits=BUNDLE_VALUES)
    with pytest.raises(CommandError, match="unsupported value of type dict"):
        check_plain_value(nested, "v", allow_dict=True)
    check_plain_value({"flat": [1, 2], "s": "x"}, "v", allow_dict=True)


def test_list_length_is_a_parameter() -> None:
    short = ValueLimits(max_depth=4, max_list_length=3, nested_dicts=False, error=CommandError)
    check_plain_value([1, 2, 3], "v", limits=short)
    with pytest.raises(CommandError, match="list too long"):
        check_plain_value([1, 2, 3, 4], "v", limits=short)
    assert BUNDLE_VALUES.max_list_length is None  # bundles: the cost caps bound arrays


@pytest.mark.parametrize("dtype", ["<f8", "<f4", "<i8", "<i4", "|b1"])
def test_arrays_of_buffer_dtypes_pass(dtype: str) -> None:
    """Arrays from a request's buffers (phoebe_kernel_worker.buffers) are plain data."""
    check_plain_value(np.zeros(5, dtype=dtype), "v")
    check_plain_value({"primary": np.zeros((2, 3), dtype=dtype)}, "v", allow_dict=True)


def test_arrays_are_bounded_like_lists() -> None:
    short = ValueLimits(max_depth=2, max_list_length=6, nested_dicts=False, error=CommandError)
    check_plain_value(np.zeros((2, 3)), "v", limits=short)
    with pytest.raises(CommandError, match="list too long"):
        check_plain_value(np.zeros(7), "v", limits=short)
    # each dimension is a level of nesting, as for nested lists
    check_plain_value(np.zeros((1, 1, 1)), "v", limits=short)
    with pytest.raises(CommandError, match="nested too deeply"):
        check_plain_value(np.zeros((1, 1, 1, 1)), "v", limits=short)
    with pytest.raises(CommandError, match="nested too deeply"):
        check_plain_value([np.zeros((1, 1, 1))], "v", limits=short)


@pytest.mark.parametrize("dtype", [">f8", "<u8", "<c16", "O", "<U3", "<M8[s]"])
def test_arrays_of_other_dtypes_are_refused(dtype: str) -> None:
    with pytest.raises(CommandError, match=r"arrays of .* are not accepted"):
        check_plain_value(np.zeros(3, dtype=dtype), "v")
