"""phoebe_kernel_worker.serialize: command results -> JSON bytes."""

from __future__ import annotations

import math
import subprocess
import sys

import astropy.units as u
import numpy as np
import orjson
import pytest

from phoebe_kernel_worker.serialize import dumps, to_jsonable


def roundtrip(obj: object) -> object:
    return orjson.loads(dumps(obj))


def test_float_array_stays_numpy_and_non_finite_become_null() -> None:
    arr = np.array([1.5, np.nan, np.inf, -np.inf, -2.0])
    converted = to_jsonable(arr)
    assert isinstance(converted, np.ndarray)
    assert converted.dtype == np.float64
    assert roundtrip(arr) == [1.5, None, None, None, -2.0]


def test_float32_and_2d_arrays_become_float64_lists() -> None:
    arr = np.array([[1.0, np.nan], [3.0, 4.5]], dtype=np.float32)
    converted = to_jsonable(arr)
    assert converted.dtype == np.float64
    assert roundtrip(arr) == [[1.0, None], [3.0, 4.5]]


def test_non_contiguous_array_is_made_contiguous() -> None:
    arr = np.arange(12.0).reshape(3, 4)[:, ::2]
    assert not arr.flags.c_contiguous
    converted = to_jsonable(arr)
    assert converted.flags.c_contiguous
    assert roundtrip(arr) == [[0.0, 2.0], [4.0, 6.0], [8.0, 10.0]]


@pytest.mark.parametrize(
    ("arr", "dtype", "expected"),
    [
        (np.array([1, 2, 3], dtype=np.int32), np.int64, [1, 2, 3]),
        (np.array([1, 2], dtype=np.uint8), np.int64, [1, 2]),
        (np.array([True, False]), np.bool_, [True, False]),
    ],
)
def test_int_and_bool_arrays(arr: np.ndarray, dtype: type, expected: list[object]) -> None:
    converted = to_jsonable(arr)
    assert isinstance(converted, np.ndarray)
    assert converted.dtype == dtype
    assert roundtrip(arr) == expected


def test_huge_uint64_values_are_not_wrapped() -> None:
    arr = np.array([2**64 - 1, 1], dtype=np.uint64)
    assert roundtrip(arr) == [2**64 - 1, 1]


def test_object_and_string_arrays_become_lists_recursively() -> None:
    obj = np.array([np.float64("nan"), "a", 3, u.m], dtype=object)
    assert roundtrip(obj) == [None, "a", 3, "m"]
    assert roundtrip(np.array(["x", "yz"])) == ["x", "yz"]
    assert roundtrip(np.array([[1 + 2j]])) == [["(1+2j)"]]


def test_zero_dim_and_masked_arrays() -> None:
    assert to_jsonable(np.array(2.5)) == 2.5
    assert to_jsonable(np.array(np.nan)) is None
    masked = np.ma.masked_array([1.0, 2.0, 3.0], mask=[False, True, False])
    assert roundtrip(masked) == [1.0, None, 3.0]


def test_numpy_scalars() -> None:
    assert to_jsonable(np.float64(1.25)) == 1.25
    assert type(to_jsonable(np.float64(1.25))) is float
    assert to_jsonable(np.float32("nan")) is None
    assert to_jsonable(np.float64("-inf")) is None
    assert to_jsonable(np.int64(7)) == 7
    assert type(to_jsonable(np.int64(7))) is int
    assert to_jsonable(np.bool_(True)) is True
    assert to_jsonable(np.str_("abc")) == "abc"


def test_python_non_finite_floats_become_none() -> None:
    assert to_jsonable(math.nan) is None
    assert to_jsonable(math.inf) is None
    assert to_jsonable(-math.inf) is None
    assert roundtrip({"a": math.nan, "b": [1.0, math.inf]}) == {"a": None, "b": [1.0, None]}


def test_astropy_units_and_quantities() -> None:
    assert to_jsonable(u.solRad) == "solRad"
    assert to_jsonable(u.W / u.m**2) == "W / m2"
    assert roundtrip(3.0 * u.d) == {"value": 3.0, "unit": "d"}
    assert roundtrip(np.array([1.0, np.nan]) * u.km / u.s) == {
        "value": [1.0, None],
        "unit": "km / s",
    }


def test_containers_keys_and_fallbacks() -> None:
    class Thing:
        def __str__(self) -> str:
            return "thing!"

    data = {
        1: (np.int16(2), {np.float64(0.5): "half"}),
        "set": {3},
        "bytes": b"ab\xff",
        "obj": Thing(),
        "big": 2**70,
        "none": None,
    }
    assert roundtrip(data) == {
        "1": [2, {"0.5": "half"}],
        "set": [3],
        "bytes": "ab\ufffd",
        "obj": "thing!",
        "big": str(2**70),
        "none": None,
    }


def test_large_float_array_goes_through_numpy_path() -> None:
    arr = np.linspace(0.0, 1.0, 100_000)
    arr[17] = np.nan
    converted = to_jsonable({"result": {"fluxes": arr}})
    assert converted["result"]["fluxes"] is arr  # no copy, no Python list
    parsed = orjson.loads(dumps({"result": {"fluxes": arr}}))
    values = parsed["result"]["fluxes"]
    assert len(values) == 100_000
    assert values[17] is None
    assert values[-1] == 1.0


def test_reply_envelope() -> None:
    reply = dumps({"success": True, "result": {"model": {"lc01": {"fluxes": np.ones(3)}}}})
    assert orjson.loads(reply) == {
        "success": True,
        "result": {"model": {"lc01": {"fluxes": [1.0, 1.0, 1.0]}}},
    }


def test_import_does_not_load_phoebe_or_astropy() -> None:
    code = (
        "import sys, phoebe_kernel_worker.serialize as s; "
        "s.dumps({'a': 1.0}); "
        "print('phoebe' in sys.modules, 'astropy' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["False", "False"]


def test_dumps_with_buffers_takes_large_numeric_arrays_out_of_the_json() -> None:
    """A request that asks for buffers gets its result's large arrays as raw bits (NaN
    stays NaN: no ``null``), in the order of their references; small ones stay JSON."""
    from phoebe_kernel_worker.serialize import dumps_with_buffers

    fluxes = np.array([np.nan, -0.0, 5e-324, np.inf] * 500)
    result = {
        "model": {"lc": {"fluxes": fluxes, "times": np.arange(2000, dtype=">i4")}},
        "small": np.arange(3.0),
        "flags": [np.ones(1500, dtype=bool)],
        "text": "x",
    }
    content, buffers = dumps_with_buffers({"success": True, "result": result}, 1000)
    assert orjson.loads(content) == {
        "success": True,
        "result": {
            "model": {"lc": {"fluxes": {"__buffer__": 0}, "times": {"__buffer__": 1}}},
            "small": [0.0, 1.0, 2.0],
            "flags": [{"__buffer__": 2}],
            "text": "x",
        },
    }
    assert buffers[0].tobytes() == fluxes.tobytes()
    assert buffers[1].dtype.str == "<i8" and buffers[1].tolist() == list(range(2000))
    assert buffers[2].dtype.str == "|b1" and buffers[2].all()
    assert dumps_with_buffers({"a": np.arange(5.0)}, 1000) == (b'{"a":[0.0,1.0,2.0,3.0,4.0]}', [])
