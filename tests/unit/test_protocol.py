"""The wire protocol: framing, signing, replay and staleness checks, connection files."""

from __future__ import annotations

import os
import stat
import time

import orjson
import pytest

from phoebe_kernel_worker import protocol
from phoebe_kernel_worker.protocol import ConnectionInfo, ProtocolError, Signer
from phoebe_kernel_worker.protocol.frames import MAX_BUFFERS

KEY = protocol.new_key()


def pair() -> tuple[Signer, Signer]:
    return Signer(KEY, "s1"), Signer(KEY, "s1")


def test_round_trip_keeps_content_bytes_and_routing_ids():
    a, b = pair()
    msg_id, frames = a.serialize("execute_request", b'{"command":"ping"}', status="ok")
    ids, msg = b.deserialize([b"peer-id", *frames])
    assert ids == [b"peer-id"]
    assert msg.msg_id == msg_id and msg.msg_type == "execute_request"
    assert msg.content == b'{"command":"ping"}' and msg.json() == {"command": "ping"}
    assert msg.header["status"] == "ok" and msg.parent_id is None
    assert msg.reply_type() == "execute_reply"


def test_reply_carries_parent():
    a, b = pair()
    _, frames = a.serialize("status_reply", b"{}", parent_id="abc")
    assert b.deserialize(frames)[1].parent_id == "abc"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda f: [f[0], b"0" * 64, f[2], f[3]],  # wrong signature
        lambda f: [f[0], f[1], f[2], f[3] + b" "],  # content changed
        lambda f: [f[0], f[1], f[2].replace(b"execute", b"shutdown"), f[3]],  # header changed
        lambda f: [f[0], b"", f[2], f[3]],  # unsigned
    ],
)
def test_tampered_messages_are_rejected(mutate):
    a, b = pair()
    _, frames = a.serialize("execute_request", b'{"command":"ping"}')
    with pytest.raises(ProtocolError, match="signature"):
        b.deserialize(mutate(frames))


def test_frames_cannot_be_shifted_between_header_and_content():
    a, b = pair()
    _, frames = a.serialize("x", b"ab")
    # moving bytes between frames keeps the concatenation but changes the length prefixes
    with pytest.raises(ProtocolError):
        b.deserialize([frames[0], frames[1], frames[2] + b"a", b"b"])


def test_buffers_round_trip_and_are_signed():
    """Buffer frames travel after the content, and the signature covers them (unlike
    Jupyter's): changing, dropping, adding or re-splitting one is refused."""
    a, b = pair()
    buffers = [b"\x00" * 16, memoryview(b"0123456789abcdef")[4:12], b""]
    _, frames = a.serialize("execute_request", b"{}", buffers=buffers, buffers_meta=1)
    assert len(frames) == 4 + len(buffers)
    _, msg = b.deserialize(frames)
    assert msg.buffers == [b"\x00" * 16, b"456789ab", b""] and msg.header["buffers_meta"] == 1
    without = a.sign(frames[2], frames[3])
    assert frames[1] != without  # the buffers are in the signature
    for mutated in (
        [*frames[:4], b"\x01" + b"\x00" * 15, *frames[5:]],  # a changed byte
        frames[:-1],  # a dropped buffer
        [*frames, b"extra"],  # an added one
        [*frames[:4], b"\x00" * 8, b"\x00" * 8 + frames[5], *frames[6:]],  # re-split
    ):
        with pytest.raises(ProtocolError, match="signature"):
            Signer(KEY, "s1").deserialize(mutated)


def test_no_more_than_max_buffers():
    with pytest.raises(ValueError, match=f"at most {MAX_BUFFERS}"):
        Signer(KEY, "s1").serialize("x", b"{}", buffers=[b""] * (MAX_BUFFERS + 1))


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([b"garbage"], "delimiter"),
        ([], "delimiter"),
        ([protocol.DELIM, b"sig"], "expected 3 to"),
        # a fourth frame would be a buffer: covered by the signature, which it fails
        ([protocol.DELIM, b"a", b"b", b"c", b"d"], "signature"),
        ([protocol.DELIM, *[b"x"] * (4 + MAX_BUFFERS)], "expected 3 to"),
    ],
)
def test_malformed_framing(frames, match):
    with pytest.raises(ProtocolError, match=match):
        Signer(KEY, "s1").deserialize(frames)


def test_signed_but_malformed_header_is_rejected():
    s = Signer(KEY, "s1")
    for header in (
        b"not json",
        b"[1]",
        orjson.dumps({"msg_id": 1}),
        orjson.dumps({"msg_type": "x"}),
    ):
        with pytest.raises(ProtocolError):
            s.deserialize([protocol.DELIM, s.sign(header, b"{}"), header, b"{}"])


def test_replay_is_rejected():
    a, b = pair()
    _, frames = a.serialize("execute_request", b"{}")
    b.deserialize(frames)
    with pytest.raises(ProtocolError, match="replayed"):
        b.deserialize(frames)


def test_replay_history_is_bounded():
    a, b = Signer(KEY, "s1"), Signer(KEY, "s1", history=4)
    for _ in range(10):
        b.deserialize(a.serialize("x", b"{}")[1])
    assert len(b._history) == 4


def test_other_session_and_stale_messages_are_rejected():
    other = Signer(KEY, "s2")
    with pytest.raises(ProtocolError, match="another session"):
        Signer(KEY, "s1").deserialize(other.serialize("x")[1])
    s = Signer(KEY, "s1", max_age=5)
    header = orjson.dumps(
        {
            "msg_id": "m",
            "msg_type": "x",
            "session": "s1",
            "date": time.time() - 60,
            "parent_id": None,
        }
    )
    with pytest.raises(ProtocolError, match="stale"):
        s.deserialize([protocol.DELIM, s.sign(header, b""), header, b""])


def test_wrong_key_is_rejected():
    _, frames = Signer(protocol.new_key(), "s1").serialize("x")
    with pytest.raises(ProtocolError, match="signature"):
        Signer(KEY, "s1").deserialize(frames)


def test_empty_key_refused():
    with pytest.raises(ValueError, match="key"):
        Signer(b"", "s1")


def test_derived_keys_are_stable_and_distinct():
    secret = os.urandom(32)
    assert protocol.derive_session_key(secret, "a") == protocol.derive_session_key(secret, "a")
    assert protocol.derive_session_key(secret, "a") != protocol.derive_session_key(secret, "b")
    assert protocol.derive_session_key(secret, "a") != protocol.derive_session_key(
        os.urandom(32), "a"
    )


def test_connection_file_is_private_and_round_trips(tmp_path):
    info = ConnectionInfo(
        session_id="s1", key=KEY, session_dir=str(tmp_path), port_range=(100, 200), extra={"x": 1}
    )
    path = protocol.write_connection_file(tmp_path / "c.json", info)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    back = protocol.read_connection_file(path)
    assert back == info
    assert list(tmp_path.glob(".*tmp")) == []


def test_connection_file_rejects_unknown_scheme(tmp_path):
    data = ConnectionInfo(session_id="s", key=KEY, session_dir="/x").to_dict()
    data["signature_scheme"] = "none"
    with pytest.raises(ValueError, match="signature scheme"):
        ConnectionInfo.from_dict(data)


def test_readiness_report():
    eps = {
        "shell": "tcp://127.0.0.1:1",
        "control": "tcp://127.0.0.1:2",
        "iopub": "tcp://127.0.0.1:3",
    }
    assert protocol.endpoints_from_json(protocol.endpoints_to_json(eps, pid=7)) == (eps, 7)
    for bad in (b"", b"{}", b'{"endpoints": {"shell": "x"}, "pid": 1}', b"\xff"):
        with pytest.raises(ValueError, match="malformed"):
            protocol.endpoints_from_json(bad)
