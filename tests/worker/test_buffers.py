"""The worker's side of typed buffers: arrays rebuilt from signed frames, checked again.

:func:`phoebe_kernel_worker.buffers.attach_buffers` directly, then a real worker
process (the light test session) given signed ``execute_request`` messages with buffer
frames: it answers good ones with the arrays in place and bad ones with
``bad_request``, and serves on.
"""

from __future__ import annotations

import hashlib

import numpy as np
import orjson
import pytest

from phoebe_kernel_worker import protocol
from phoebe_kernel_worker.buffers import FramesError, array_from_buffer, attach_buffers
from phoebe_kernel_worker.protocol import Signer
from phoebe_kernel_worker.protocol.frames import ACCEPT_FIELD, FEATURE, HEADER_FIELD, BufferSpec

from .test_worker_process import worker  # noqa: F401 - the real worker process fixture


def header(*specs: tuple[str, list[int]]) -> dict:
    return {HEADER_FIELD: [{"dtype": d, "shape": s} for d, s in specs]}


def test_arrays_view_the_frames_read_only():
    values = np.array([np.nan, -0.0, 5e-324, 1.5, -np.inf])
    data = values.tobytes()
    request = {"command": "x", "v": {"__buffer__": 0}, "w": [1, {"__buffer__": 1}]}
    out = attach_buffers(request, header(("<f8", [5]), ("<i4", [2, 2])), [data, bytes(16)])
    assert out["v"].tobytes() == data and out["v"].dtype == np.float64
    assert np.shares_memory(out["v"], np.frombuffer(data, np.uint8))  # no copy: the frame
    assert not out["v"].flags.writeable
    assert out["w"][0] == 1 and out["w"][1].shape == (2, 2) and out["w"][1].dtype == np.int32


@pytest.mark.parametrize(
    ("request_", "hdr", "buffers", "match"),
    [
        ({"v": {"__buffer__": 0}}, header(("<f8", [2])), [bytes(15)], "15 bytes"),
        ({"v": {"__buffer__": 0}}, header(("<f8", [2])), [], "1 buffers described, 0 received"),
        ({"v": {"__buffer__": 0}}, {}, [bytes(8)], "0 buffers described, 1 received"),
        ({"v": {"__buffer__": 0}}, header(("<c16", [1])), [bytes(16)], "not allowed"),
        ({"v": {"__buffer__": 1}}, header(("<f8", [1])), [bytes(8)], "reference to buffer 1"),
        ({"v": 1}, header(("<f8", [1])), [bytes(8)], "not referenced"),
        ({"v": {"__buffer__": 0}}, header(("|b1", [2])), [b"\x01\x02"], "only the bytes 0 and 1"),
        ({"v": {"__buffer__": 0}}, {HEADER_FIELD: "x"}, [bytes(8)], "described by a list"),
    ],
)
def test_bad_buffers_are_refused(request_, hdr, buffers, match):
    with pytest.raises(FramesError, match=match):
        attach_buffers(request_, hdr, buffers)


def test_bool_buffers_hold_only_0_and_1():
    arr = array_from_buffer(BufferSpec("|b1", (3,)), b"\x00\x01\x01", 0)
    assert arr.tolist() == [False, True, True]


def execute(sock, signer, request: dict, buffers: list[bytes], hdr: dict | None = None):
    """Send one signed execute_request with buffer frames; the verified reply."""
    if hdr is None:
        hdr = header(*(("<f8", [len(b) // 8]) for b in buffers))
    msg_id, frames = signer.serialize(
        protocol.EXECUTE_REQUEST, orjson.dumps(request), buffers=buffers, **hdr
    )
    sock.send_multipart(frames)
    _, msg = Signer(signer._key, signer.session).deserialize(sock.recv_multipart())
    assert msg.parent_id == msg_id
    return msg


async def test_worker_takes_buffers_and_says_so(worker):  # noqa: F811
    _, socks, signer, _ = worker
    status = execute_control(socks["control"], signer)
    assert FEATURE in status["features"]
    values = np.array([np.nan, -0.0, 5e-324, 2.2250738585072014e-308 / 3] * 1000)
    request = {"command": "arrays", "v": {"__buffer__": 0}, "n": 3}
    reply = execute(socks["shell"], signer, request, [values.tobytes()])
    assert reply.header["status"] == "ok"
    result = reply.json()["result"]
    assert result["n"] == {"type": "int"}
    assert result["v"] == {
        "type": "ndarray",
        "dtype": "<f8",
        "shape": [4000],
        "sha256": hashlib.sha256(values.tobytes()).hexdigest(),
        "writeable": False,
        "view": True,
    }


def execute_control(sock, signer):
    _, frames = signer.serialize(protocol.STATUS_REQUEST)
    sock.send_multipart(frames)
    _, msg = Signer(signer._key, signer.session).deserialize(sock.recv_multipart())
    return msg.json()


async def test_worker_answers_bad_buffers_with_bad_request_and_serves_on(worker):  # noqa: F811
    _, socks, signer, _ = worker
    shell = socks["shell"]
    for request, buffers, hdr in (
        ({"command": "echo", "v": {"__buffer__": 0}}, [bytes(12)], header(("<f8", [2]))),
        ({"command": "echo", "v": {"__buffer__": 3}}, [bytes(8)], None),
        ({"command": "echo"}, [bytes(8)], None),
        ({"command": "echo", "v": {"__buffer__": 0}}, [bytes(8)], header(("<u8", [1]))),
    ):
        reply = execute(shell, signer, request, buffers, hdr)
        assert reply.header["status"] == "bad_request", reply.json()
        assert reply.json()["success"] is False and reply.json()["error"]
    reply = execute(shell, signer, {"command": "ping"}, [])
    assert reply.json() == {"success": True, "result": {"status": "ready"}}


async def test_unsigned_buffers_are_dropped(worker):  # noqa: F811
    """A buffer added to a signed message fails the signature: dropped unanswered, like
    any forged message (the next reply answers the next request); the worker goes on."""
    _, socks, signer, _ = worker
    shell = socks["shell"]
    _, frames = signer.serialize(protocol.EXECUTE_REQUEST, b'{"command": "echo"}')
    shell.send_multipart([*frames, b"\x00" * 8])
    reply = execute(shell, signer, {"command": "ping"}, [])  # checks the parent id
    assert reply.json()["success"] is True


async def test_worker_sends_result_arrays_as_buffers_when_asked(worker):  # noqa: F811
    _, socks, signer, _ = worker
    values = np.array([np.nan, -0.0, 5e-324, -np.inf] * 600)
    request = {"command": "echo", "v": {"__buffer__": 0}, "small": [1, 2]}
    hdr = {**header(("<f8", [2400])), ACCEPT_FIELD: True}
    reply = execute(socks["shell"], signer, request, [values.tobytes()], hdr)
    assert reply.header["status"] == "ok"
    assert reply.json() == {"success": True, "result": {"v": {"__buffer__": 0}, "small": [1, 2]}}
    assert reply.header[HEADER_FIELD] == [{"dtype": "<f8", "shape": [2400]}]
    assert reply.buffers == [values.tobytes()]
    # without asking: JSON, NaN as null
    reply = execute(socks["shell"], signer, request, [values.tobytes()])
    assert reply.buffers == [] and reply.json()["result"]["v"][:4] == [None, -0.0, 5e-324, None]
