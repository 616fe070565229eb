"""The ``/send`` fast path for large bodies: not parsed by the hub, same answers.

A body over ``FAST_PATH_BYTES`` that starts with its command goes to the worker unparsed;
the worker answers a malformed one with status ``bad_request``, which the hub turns into
the 400 a small malformed body gets.
"""

from __future__ import annotations

import orjson
import pytest

from phoebe_spawner.handlers.base import FAST_PATH_BYTES


async def test_large_valid_body_round_trips(make_hub):
    _, client = await make_hub()
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    values = list(range(FAST_PATH_BYTES // 4))
    body = orjson.dumps({"command": "echo", "values": values})
    assert len(body) > FAST_PATH_BYTES
    resp = await client.post(f"/send/{sid}", body=body)
    assert resp.status == 200 and resp.json() == {"success": True, "result": {"values": values}}


@pytest.mark.parametrize(
    "tail",
    [b", bad", b', "x": [1, 2', b"} trailing"],
)
async def test_large_malformed_body_is_400(make_hub, tail):
    _, client = await make_hub()
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    body = b'{"command": "echo", "pad": "' + b"a" * (2 * FAST_PATH_BYTES) + b'"' + tail
    resp = await client.post(f"/send/{sid}", body=body)
    assert resp.status == 400 and "Malformed JSON" in resp.detail
    assert (await client.send(sid, "ping")).status == 200


async def test_large_body_with_command_not_first_is_parsed_by_the_hub(make_hub):
    _, client = await make_hub()
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    pad = "a" * (2 * FAST_PATH_BYTES)
    resp = await client.post(f"/send/{sid}", body=orjson.dumps({"pad": pad, "command": "echo"}))
    assert resp.status == 200 and resp.json() == {"success": True, "result": {"pad": pad}}
    resp = await client.post(f"/send/{sid}", body=orjson.dumps({"pad": pad}))
    assert resp.status == 400 and "command" in resp.detail
