"""One parse rule for the command name: a body naming ``command`` twice is a 400.

The hub's fast path for large bodies reads the first ``"command"``, orjson (hub and
worker) keeps the last: ``{"command": "get_datasets", ..., "command": "run_compute"}``
ran a long computation logged, timed and rate-limited as a cheap one.  Such bodies are
refused on every path (small, large, streamed, jobs), and nothing runs.
"""

from __future__ import annotations

import orjson

from phoebe_spawner.handlers.base import FAST_PATH_BYTES
from phoebe_spawner.sessions.bus import CommandFinished

DETAIL = "Malformed JSON body: request names 'command' more than once"


async def _start(client) -> str:
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 200, resp.body
    return str(resp.json()["session_id"])


async def _files(client, sid: str) -> list[str]:
    resp = await client.send(sid, "whereami")
    assert resp.status == 200
    return list(resp.json()["result"]["files"])


def _listen(app) -> list[str]:
    seen: list[str] = []
    app.manager.bus.subscribe(CommandFinished, lambda finished: seen.append(finished.command))
    return seen


async def test_small_body_with_two_commands_is_400(make_hub):
    app, client = await make_hub()
    sid = await _start(client)
    before = await _files(client, sid)
    seen = _listen(app)
    bodies = [
        b'{"command": "echo", "command": "touch", "name": "ran"}',
        b'{"command": "touch", "name": "ran", "command": "echo"}',
        b'{"command": "echo", "comm\\u0061nd": "touch", "name": "ran"}',
    ]
    for body in bodies:
        resp = await client.post(f"/send/{sid}", body=body)
        assert resp.status == 400 and resp.detail == DETAIL, body
    assert seen == []
    assert await _files(client, sid) == before


async def test_large_body_with_two_commands_is_400(make_hub):
    """Over FAST_PATH_BYTES the hub reads only the leading command; the worker refuses."""
    _, client = await make_hub()
    sid = await _start(client)
    before = await _files(client, sid)
    pad = b"a" * (2 * FAST_PATH_BYTES)
    leading = b'{"command": "echo", "pad": "' + pad + b'", "command": "touch", "name": "ran"}'
    trailing = b'{"pad": "' + pad + b'", "command": "echo", "command": "touch", "name": "ran"}'
    for body in (leading, trailing):
        assert len(body) > FAST_PATH_BYTES
        resp = await client.post(f"/send/{sid}", body=body)
        assert resp.status == 400 and resp.detail == DETAIL
    assert await _files(client, sid) == before
    assert (await client.send(sid, "ping")).status == 200


async def test_jobs_with_two_commands_is_400(make_hub):
    _, client = await make_hub()
    sid = await _start(client)
    body = b'{"command": "echo", "command": "touch", "name": "ran"}'
    resp = await client.post(f"/api/v1/sessions/{sid}/jobs", body=body)
    assert resp.status == 400 and resp.detail == DETAIL


async def test_command_keys_in_values_are_fine(make_hub):
    """Only the top level counts: nested ``command`` keys and the word in strings pass."""
    _, client = await make_hub()
    sid = await _start(client)
    body = orjson.dumps({"command": "echo", "args": {"command": "x"}, "text": '"command"'})
    resp = await client.post(f"/send/{sid}", body=body)
    assert resp.status == 200
    assert resp.json()["result"] == {"args": {"command": "x"}, "text": '"command"'}
    big = {
        "command": "echo",
        "nested": [{"command": 1}, {"command": 2}],
        "pad": "é" * FAST_PATH_BYTES,
    }
    resp = await client.post(f"/send/{sid}", body=orjson.dumps(big))
    assert resp.status == 200 and resp.json()["result"]["nested"] == big["nested"]
