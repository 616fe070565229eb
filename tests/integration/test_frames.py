"""``POST /send`` with numpy arrays as typed buffers: through a real hub to real workers.

The light test session's ``arrays`` command says what the worker received (type, dtype,
shape, SHA-256 of the bytes, whether it is a view of the frame), so these tests see the
bits the command got. Bad bodies each get a clear 4xx with the reason, and the session
serves on. The client library's automatic use of the path (and its JSON fallback) is
tested at the end, on a threaded hub.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from phoebe_kernel_worker.protocol.frames import MAX_BUFFERS, MEDIA_TYPE
from phoebe_spawner.client import BadRequest, PhoebeClient
from phoebe_spawner.client._frames import decode
from phoebe_spawner.client._frames import encode as client_encode
from phoebe_spawner.handlers.frames import MAGIC

from .hub_thread import ThreadedHub

FRAMES = {"Content-Type": MEDIA_TYPE}
#: what a PHOEBE user may well send: NaN, a negative zero, subnormal numbers, infinities
SPECIAL = np.array([np.nan, -0.0, 5e-324, 2.2250738585072014e-308 / 3, -np.inf] * 400)


def envelope(request: dict, buffers: list[bytes], specs: list[dict] | None = None) -> bytes:
    json_part = orjson.dumps(request)
    if specs is None:
        specs = [{"dtype": "<f8", "shape": [len(b) // 8], "nbytes": len(b)} for b in buffers]
    header = orjson.dumps({"json": len(json_part), "buffers": specs})
    return struct.pack("<4sI", MAGIC, len(header)) + header + json_part + b"".join(buffers)


def encode(request: dict) -> bytes:
    """The client's frames body for ``request`` (which must hold an array worth one)."""
    body = client_encode(request)
    assert body is not None
    return body


def sha(array: np.ndarray) -> str:
    return hashlib.sha256(array.tobytes()).hexdigest()


async def start(make_hub: Any, **overrides: Any) -> tuple[Any, Any, str]:
    app, client = await make_hub(**overrides)
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 200, resp.body
    return app, client, resp.json()["session_id"]


async def test_health_advertises_frames(make_hub):
    _, client = await make_hub()
    assert (await client.get("/health")).json() == {"status": "ok", "features": ["frames"]}


async def test_arrays_arrive_bit_for_bit_as_views_of_the_frames(make_hub):
    _, client, sid = await start(make_hub)
    ints = np.arange(-3000, 3000, dtype=np.int32).reshape(2, 3000)
    flags = np.arange(2000) % 3 == 0
    body = encode({"command": "arrays", "v": SPECIAL, "i": ints, "b": flags, "n": 1})
    resp = await client.post(f"/send/{sid}", body=body, headers=FRAMES)
    assert resp.status == 200, resp.body
    result = resp.json()["result"]
    assert result["n"] == {"type": "int"}
    for name, array in (("v", SPECIAL), ("i", ints), ("b", flags)):
        assert result[name] == {
            "type": "ndarray",
            "dtype": array.dtype.str,
            "shape": list(array.shape),
            "sha256": sha(array),
            "writeable": False,
            "view": True,
        }
    # the reply is the worker's, byte for byte, as on the JSON path
    echo = encode({"command": "echo", "v": np.arange(2000.0)})
    resp = await client.post(f"/send/{sid}", body=echo, headers=FRAMES)
    assert resp.json() == {"success": True, "result": {"v": list(range(2000))}}


def bad_bodies() -> list[tuple[str, bytes, str]]:
    one = np.arange(4.0).tobytes()
    ref = {"command": "echo", "v": {"__buffer__": 0}}
    good = envelope(ref, [one])
    many = {"command": "echo", **{f"v{i}": {"__buffer__": i} for i in range(MAX_BUFFERS + 1)}}
    return [
        ("truncated", good[:-5], "lengths do not add up"),
        ("truncated envelope", good[:6], "truncated body"),
        ("lengths", envelope(ref, [one + b"\0" * 8], [{"dtype": "<f8", "shape": [4]}]), "add up"),
        ("out of range", envelope({"command": "echo", "v": {"__buffer__": 2}}, [one]), "buffer 2"),
        ("unused", envelope({"command": "echo"}, [one]), "not referenced"),
        ("dtype", envelope(ref, [one], [{"dtype": "|O", "shape": [4]}]), "not allowed"),
        ("shape", envelope(ref, [one], [{"dtype": "<f8", "shape": [5]}]), "add up"),
        (
            "nbytes",
            envelope(ref, [one], [{"dtype": "<f8", "shape": [3], "nbytes": 32}]),
            "does not match",
        ),
        (
            "too many",
            envelope(many, [b""] * (MAX_BUFFERS + 1), [{"dtype": "<f8", "shape": [0]}] * 33),
            "more than the limit",
        ),
        ("no command", envelope({"v": {"__buffer__": 0}}, [one]), "'command'"),
        ("not frames", orjson.dumps(ref), "starts with"),
    ]


@pytest.mark.parametrize(("case", "body", "detail"), bad_bodies(), ids=lambda x: str(x)[:20])
async def test_bad_bodies_are_clear_400s_and_the_session_serves_on(make_hub, case, body, detail):
    _, client, sid = await start(make_hub)
    resp = await client.post(f"/send/{sid}", body=body, headers=FRAMES)
    assert resp.status == 400, (case, resp.body)
    assert resp.detail.startswith("Malformed frames body: ") and detail in resp.detail
    assert (await client.send(sid, "ping")).json()["success"] is True


async def test_bad_bool_bytes_are_refused_by_the_worker(make_hub):
    """What only the worker looks at (the bytes themselves) gets the same 400."""
    _, client, sid = await start(make_hub)
    body = envelope(
        {"command": "arrays", "v": {"__buffer__": 0}},
        [b"\x01\x07"],
        [{"dtype": "|b1", "shape": [2]}],
    )
    resp = await client.post(f"/send/{sid}", body=body, headers=FRAMES)
    assert resp.status == 400 and "only the bytes 0 and 1" in resp.detail
    assert (await client.send(sid, "ping")).status == 200


async def test_element_caps_and_the_body_limit_apply(make_hub):
    _, client, sid = await start(
        make_hub,
        LocalProcessSpawner__worker_limits={"max_array_length": 2000},
        PhoebeSpawnerApp__max_body_size=64 * 1024,
    )
    body = encode({"command": "arrays", "v": np.zeros(2001)})
    resp = await client.post(f"/send/{sid}", body=body, headers=FRAMES)
    assert resp.status == 400
    assert (
        resp.detail == "buffer 0: an array of 2001 elements is above this service's limit of 2000"
    )
    ok = await client.post(
        f"/send/{sid}", body=encode({"command": "arrays", "v": np.zeros(2000)}), headers=FRAMES
    )
    assert ok.status == 200 and ok.json()["result"]["v"]["shape"] == [2000]
    # the body limit counts the whole body, buffers included
    huge = encode({"command": "arrays", **{f"v{i}": np.zeros(2000) for i in range(5)}})
    assert len(huge) > 64 * 1024
    resp = await client.post(f"/send/{sid}", body=huge, headers=FRAMES)
    assert resp.status == 413
    assert (await client.send(sid, "ping")).status == 200


async def test_a_worker_without_frames_gets_415(make_hub):
    """A worker that does not list ``frames`` (an older one) is never sent buffers."""
    app, client, sid = await start(make_hub)
    session = app.manager.sessions[sid]
    session.channel.features = frozenset()
    body = encode({"command": "arrays", "v": np.zeros(2000)})
    resp = await client.post(f"/send/{sid}", body=body, headers=FRAMES)
    assert resp.status == 415 and "send JSON" in resp.detail
    assert (await client.send(sid, "ping")).status == 200


async def test_frames_to_someone_elses_or_an_unknown_session(make_hub):
    from ..conftest import register

    _, client = await make_hub(auth_mode="jwt")
    alice = await register(client, "alice@example.org")
    bob = await register(client, "bob@example.org")
    sid = (await client.post("/dash/start-session", {}, token=alice)).json()["session_id"]
    body = encode({"command": "arrays", "v": np.zeros(2000)})
    resp = await client.post(f"/send/{sid}", body=body, headers=FRAMES, token=bob)
    assert resp.status == 403
    resp = await client.post("/send/nope", body=body, headers=FRAMES, token=alice)
    assert resp.status == 404
    resp = await client.post(f"/send/{sid}", body=body, headers=FRAMES, token=None)
    assert resp.status == 401


async def test_result_arrays_come_back_as_buffers_when_asked(make_hub):
    app, client, sid = await start(make_hub)
    accept = {"Accept": f"{MEDIA_TYPE}, application/json"}
    resp = await client.post(
        f"/send/{sid}", body=encode({"command": "echo", "v": SPECIAL}), headers={**FRAMES, **accept}
    )
    assert resp.status == 200 and resp.headers["Content-Type"] == MEDIA_TYPE
    result = decode(resp.body)["result"]
    assert result["v"].tobytes() == SPECIAL.tobytes()  # NaN as NaN, not null
    # a JSON request may ask too; small results stay JSON
    resp = await client.post(f"/send/{sid}", {"command": "echo", "n": 1}, headers=accept)
    assert resp.headers["Content-Type"] == "application/json" and resp.json()["result"] == {"n": 1}
    big = np.arange(3000.0)
    stored = encode({"command": "set_value", "twig": "big", "value": big})
    assert (await client.post(f"/send/{sid}", body=stored, headers=FRAMES)).status == 200
    resp = await client.post(
        f"/send/{sid}", {"command": "get_value", "twig": "big"}, headers=accept
    )
    assert resp.headers["Content-Type"] == MEDIA_TYPE
    assert decode(resp.body)["result"].tobytes() == big.tobytes()
    # malformed JSON with Accept: the same 400 as without
    resp = await client.post(f"/send/{sid}", body=b"{nope", headers=accept)
    assert resp.status == 400 and "Malformed JSON body" in resp.detail
    # a worker without frames answers JSON, whatever the client accepts
    app.manager.sessions[sid].channel.features = frozenset()
    resp = await client.post(
        f"/send/{sid}", {"command": "get_value", "twig": "big"}, headers=accept
    )
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json()["result"] == big.tolist()


# --- the client library ------------------------------------------------------------------


@pytest.fixture
def threaded_hub(tmp_path: Path) -> Any:
    with ThreadedHub(tmp_path / "hub") as h:
        yield h


def test_client_sends_large_arrays_as_buffers(threaded_hub):
    with PhoebeClient(threaded_hub.url) as client:
        client.start_session()
        got = client.send("arrays", v=SPECIAL, small=np.arange(5.0))
        assert got["v"]["sha256"] == sha(SPECIAL) and got["v"]["view"] is True
        assert got["small"] == {"type": "list"}  # small arrays stay JSON
        assert client.connections_opened == 1  # /health asked once, on the same connection
        client.binary_arrays = False
        assert client.send("arrays", v=SPECIAL)["v"] == {"type": "list"}


def test_client_falls_back_to_json_when_the_worker_refuses(threaded_hub):
    with PhoebeClient(threaded_hub.url) as client:
        sid = client.start_session()["session_id"]
        threaded_hub.app.manager.sessions[sid].channel.features = frozenset()
        assert client.send("arrays", v=np.zeros(2000))["v"] == {"type": "list"}
        assert sid in client._frames_refused  # asked once, then JSON at once


def test_client_against_a_hub_without_frames_sends_json(threaded_hub, monkeypatch):
    from phoebe_spawner.handlers import api

    monkeypatch.setattr(api, "FEATURES", [])
    with PhoebeClient(threaded_hub.url) as client:
        client.start_session()
        assert client.send("arrays", v=np.zeros(2000))["v"] == {"type": "list"}


def test_client_element_cap_is_a_bad_request(tmp_path):
    overrides = {"LocalProcessSpawner__worker_limits": {"max_array_length": 2000}}
    with ThreadedHub(tmp_path / "hub", **overrides) as hub, PhoebeClient(hub.url) as client:
        client.start_session()
        with pytest.raises(BadRequest, match="above this service's limit of 2000"):
            client.send("arrays", v=np.zeros(2001))


def test_client_gets_arrays_back_bit_for_bit(threaded_hub):
    with PhoebeClient(threaded_hub.url) as client:
        client.start_session()
        client.set_value("fluxes", SPECIAL)
        got = client.get_value("fluxes")
        assert isinstance(got, np.ndarray) and got.tobytes() == SPECIAL.tobytes()
        got[0] = 1.0  # a result is the caller's to change
    with PhoebeClient(threaded_hub.url, convert=False) as client:
        client.start_session()
        client.set_value("fluxes", SPECIAL)
        assert isinstance(client.get_value("fluxes"), list)  # plain JSON, as asked
