"""The binary request body: the client's encoder, the hub's envelope parser and the
protocol's buffer checks (pure: no hub, no worker)."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from phoebe_kernel_worker.protocol.frames import (
    MAX_BUFFERS,
    BufferSpec,
    FramesError,
    resolve_references,
    spec_from_json,
)
from phoebe_spawner.client._frames import MIN_ELEMENTS, encode
from phoebe_spawner.handlers.frames import MAGIC, is_frames, parse_body


def envelope(request: dict, buffers: list[bytes], specs: list[dict] | None = None) -> bytes:
    """A frames body built by hand (``specs`` default: one f8 vector per buffer)."""
    json_part = orjson.dumps(request)
    if specs is None:
        specs = [{"dtype": "<f8", "shape": [len(b) // 8], "nbytes": len(b)} for b in buffers]
    header = orjson.dumps({"json": len(json_part), "buffers": specs})
    return struct.pack("<4sI", MAGIC, len(header)) + header + json_part + b"".join(buffers)


def test_client_encodes_large_arrays_as_buffers_and_the_hub_reads_them_back():
    times = np.linspace(0, 1, 2000)
    flags = np.arange(3000) % 2 == 0
    small = np.arange(10.0)
    request = {
        "command": "add_dataset",
        "times": times,
        "nested": {"fluxes": [times[::-1], small], "flags": flags},
        "n": 3,
    }
    body = encode(request)
    assert body is not None
    parsed = parse_body(body)
    assert parsed.command == "add_dataset"
    json_part = orjson.loads(parsed.json)
    assert json_part == {
        "command": "add_dataset",
        "times": {"__buffer__": 0},
        "nested": {"fluxes": [{"__buffer__": 1}, small.tolist()], "flags": {"__buffer__": 2}},
        "n": 3,
    }
    specs = parsed.buffers.specs
    assert specs == (
        BufferSpec("<f8", (2000,)),
        BufferSpec("<f8", (2000,)),
        BufferSpec("|b1", (3000,)),
    )
    assert [bytes(d) for d in parsed.buffers.data] == [
        times.tobytes(),
        times[::-1].tobytes(),
        flags.tobytes(),
    ]
    # the hub never copies a buffer: each is a view of the body
    assert all(isinstance(d, memoryview) and d.obj is body for d in parsed.buffers.data)


def test_client_keeps_small_arrays_odd_dtypes_and_quantities_in_the_json():
    assert encode({"command": "x", "v": np.arange(MIN_ELEMENTS - 1.0)}) is None
    assert encode({"command": "x", "v": np.zeros(5000, dtype=np.int16)}) is None
    assert encode({"command": "x", "v": np.zeros(5000, dtype=np.complex128)}) is None
    assert encode({"command": "x", "v": [1.0] * 5000}) is None


def test_client_sends_big_endian_and_strided_arrays_as_little_endian_copies():
    big = np.arange(2000, dtype=">f8")
    strided = np.arange(8000, dtype="<i4")[::2]
    parsed = parse_body(encode({"command": "x", "a": big, "b": strided}))
    assert [s.dtype for s in parsed.buffers.specs] == ["<f8", "<i4"]
    specs, data = parsed.buffers.specs, parsed.buffers.data
    got = [np.frombuffer(d, dtype=s.dtype) for s, d in zip(specs, data, strict=True)]
    assert np.array_equal(got[0], big) and np.array_equal(got[1], strided)


def test_client_puts_at_most_max_buffers_in_buffers():
    arrays = [np.full(MIN_ELEMENTS, float(i)) for i in range(MAX_BUFFERS + 2)]
    parsed = parse_body(encode({"command": "x", "arrays": arrays}))
    assert len(parsed.buffers.specs) == MAX_BUFFERS
    tail = orjson.loads(parsed.json)["arrays"][MAX_BUFFERS:]
    assert tail == [a.tolist() for a in arrays[MAX_BUFFERS:]]


def test_bit_patterns_survive_the_envelope():
    values = np.array([np.nan, -0.0, 5e-324, 2.2250738585072014e-308 / 3, np.inf] * 300)
    parsed = parse_body(encode({"command": "x", "v": values}))
    assert bytes(parsed.buffers.data[0]) == values.tobytes()


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "truncated body"),
        (b"PSF1\x00", "truncated body"),
        (b"JSON\x00\x00\x00\x00", "starts with"),
        (struct.pack("<4sI", MAGIC, 100) + b"{}", "truncated body"),
        (struct.pack("<4sI", MAGIC, 1 << 30), "envelope header of"),
        (struct.pack("<4sI", MAGIC, 3) + b"{x}", "not JSON"),
        (struct.pack("<4sI", MAGIC, 2) + b"[]", "must be"),
    ],
)
def test_broken_envelopes_are_refused(body, match):
    with pytest.raises(FramesError, match=match):
        parse_body(body)


ONE = np.arange(4.0).tobytes()


@pytest.mark.parametrize(
    ("request_", "buffers", "specs", "match"),
    [
        # lengths that do not add up: short, long, truncated buffer
        ({"command": "x", "v": {"__buffer__": 0}}, [ONE[:-1]], None, "do not add up|nbytes"),
        (
            {"command": "x", "v": {"__buffer__": 0}},
            [ONE + b"x"],
            [{"dtype": "<f8", "shape": [4], "nbytes": 32}],
            "do not add up",
        ),
        # references: out of range, unused, repeated, malformed
        ({"command": "x", "v": {"__buffer__": 1}}, [ONE], None, "reference to buffer 1"),
        ({"command": "x"}, [ONE], None, r"buffers \[0\] are not referenced"),
        (
            {"command": "x", "a": {"__buffer__": 0}, "b": {"__buffer__": 0}},
            [ONE],
            None,
            "more than once",
        ),
        ({"command": "x", "v": {"__buffer__": "0"}}, [ONE], None, "a reference must be"),
        ({"command": "x", "v": {"__buffer__": 0, "y": 1}}, [ONE], None, "a reference must be"),
        # dtypes, shapes, lengths
        (
            {"command": "x", "v": {"__buffer__": 0}},
            [ONE],
            [{"dtype": ">f8", "shape": [4], "nbytes": 32}],
            "dtype '>f8' is not allowed",
        ),
        (
            {"command": "x", "v": {"__buffer__": 0}},
            [ONE],
            [{"dtype": "|O", "shape": [4], "nbytes": 32}],
            "not allowed",
        ),
        (
            {"command": "x", "v": {"__buffer__": 0}},
            [ONE],
            [{"dtype": "<f8", "shape": [3], "nbytes": 32}],
            "does not match shape",
        ),
        (
            {"command": "x", "v": {"__buffer__": 0}},
            [ONE],
            [{"dtype": "<f8", "shape": [-4], "nbytes": 32}],
            "shape must be",
        ),
        (
            {"command": "x", "v": {"__buffer__": 0}},
            [ONE],
            [{"dtype": "<f8", "shape": [1, 1, 1, 1, 4], "nbytes": 32}],
            "shape must be",
        ),
        # too many buffers
        (
            {"command": "x", **{f"v{i}": {"__buffer__": i} for i in range(MAX_BUFFERS + 1)}},
            [b""] * (MAX_BUFFERS + 1),
            [{"dtype": "<f8", "shape": [0]}] * (MAX_BUFFERS + 1),
            "more than the limit",
        ),
        # the JSON part itself
        ({"v": {"__buffer__": 0}}, [ONE], None, "naming a 'command'"),
    ],
)
def test_bad_frames_bodies_are_refused_with_their_reason(request_, buffers, specs, match):
    with pytest.raises(FramesError, match=match):
        parse_body(envelope(request_, buffers, specs))


def test_duplicate_command_in_the_json_part_is_refused():
    json_part = b'{"command": "ping", "command": "x"}'
    header = orjson.dumps({"json": len(json_part), "buffers": []})
    with pytest.raises(FramesError, match="command"):
        parse_body(struct.pack("<4sI", MAGIC, len(header)) + header + json_part)


def test_content_type_match():
    assert is_frames("application/vnd.phoebe-spawner.frames")
    assert is_frames("Application/VND.phoebe-spawner.frames; v=1")
    assert not is_frames("application/json")
    assert not is_frames(None)


def test_resolve_references_replaces_in_place_of_each_reference():
    obj = {"a": [{"__buffer__": 1}, 2], "b": {"c": {"__buffer__": 0}}}
    out = resolve_references(obj, 2, lambda i: f"array{i}")
    assert out == {"a": ["array1", 2], "b": {"c": "array0"}}
    assert obj["b"]["c"] == {"__buffer__": 0}  # the input is left alone
    deep: dict = {"command": "x"}
    for _ in range(100):
        deep = {"d": deep}
    with pytest.raises(FramesError, match="nested too deeply"):
        resolve_references(deep, 0)


def test_spec_checks():
    assert spec_from_json({"dtype": "|b1", "shape": [2, 3]}, 0).nbytes == 6
    with pytest.raises(FramesError, match="unknown fields"):
        spec_from_json({"dtype": "<i4", "shape": [1], "offset": 0}, 0)
    with pytest.raises(FramesError, match="shape must be"):
        spec_from_json({"dtype": "<i4", "shape": [2**40]}, 0)
    with pytest.raises(FramesError, match="shape must be"):
        spec_from_json({"dtype": "<i4", "shape": [True]}, 0)


def test_a_reply_with_buffers_reaches_the_client_as_writeable_arrays():
    from phoebe_spawner.client._frames import decode
    from phoebe_spawner.handlers.frames import reply_body

    fluxes = np.array([np.nan, -0.0, 5e-324] * 700)
    flags = np.ones(1100, dtype=bool)
    content = orjson.dumps(
        {"success": True, "result": {"f": {"__buffer__": 0}, "b": {"__buffer__": 1}}}
    )
    header = {
        "buffer_specs": [{"dtype": "<f8", "shape": [2100]}, {"dtype": "|b1", "shape": [1100]}]
    }
    body = b"".join(reply_body(header, content, [fluxes.tobytes(), flags.tobytes()]))
    decoded = decode(body)
    got = decoded["result"]["f"]
    assert got.tobytes() == fluxes.tobytes() and got.flags.writeable
    assert decoded["result"]["b"].dtype == np.bool_ and decoded["result"]["b"].all()
    with pytest.raises(ValueError, match="do not add up"):
        decode(body[:-1])


def test_a_worker_reply_that_does_not_add_up_is_a_502():
    from phoebe_spawner.handlers.base import ApiError
    from phoebe_spawner.handlers.frames import reply_body

    header = {"buffer_specs": [{"dtype": "<f8", "shape": [2]}]}
    for hdr, buffers in ((header, [b"x" * 15]), (header, []), ({}, [b"x" * 16])):
        with pytest.raises(ApiError) as info:
            reply_body(hdr, b"{}", buffers)
        assert info.value.status_code == 502 and "malformed" in info.value.detail
