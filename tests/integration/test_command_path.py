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


def _handler_for(app, headers: dict[str, str], path: str = "/send/abc") -> type:
    from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

    start = RequestStartLine("POST", path, "HTTP/1.1")
    request = HTTPServerRequest(start_line=start, headers=HTTPHeaders(headers, Host="hub"))
    return app.web_app.find_handler(request).handler_class


async def test_small_bodies_are_read_with_the_headers_and_others_stream(make_hub):
    """The route matcher: a small body of known length is not streamed (fewer loop
    turns per command), and so is a request with no body; a large or chunked one streams."""
    from phoebe_spawner.handlers import SMALL_SEND_BODY
    from phoebe_spawner.handlers.api import SendHandler, SmallSendHandler

    app, _ = await make_hub()
    assert _handler_for(app, {"Content-Length": "20"}) is SmallSendHandler
    assert _handler_for(app, {"Content-Length": str(SMALL_SEND_BODY)}) is SmallSendHandler
    assert _handler_for(app, {"Content-Length": str(SMALL_SEND_BODY + 1)}) is SendHandler
    assert _handler_for(app, {"Transfer-Encoding": "chunked"}) is SendHandler
    assert _handler_for(app, {"Content-Length": "-1"}) is SendHandler
    assert _handler_for(app, {}) is SmallSendHandler  # no Content-Length: no body
    assert _handler_for(app, {"Content-Length": "20"}, "/send/abc/more") is not SmallSendHandler


async def test_chunked_and_small_sends_answer_alike(make_hub):
    """The same command over both paths, and the errors of the small path."""
    from tornado.httpclient import AsyncHTTPClient

    _, client = await make_hub()
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    body = orjson.dumps({"command": "echo", "a": 1})
    small = await client.post(f"/send/{sid}", body=body)
    assert small.status == 200 and small.json() == {"success": True, "result": {"a": 1}}

    async def chunks(write):  # an unsized body: the streamed handler
        await write(body[:5])
        await write(body[5:])

    http = AsyncHTTPClient()
    resp = await http.fetch(
        f"{client.base_url}/send/{sid}",
        method="POST",
        headers={"Authorization": f"Bearer {client.token}"} if client.token else {},
        body_producer=chunks,
        raise_error=False,
    )
    assert resp.code == 200 and orjson.loads(resp.body) == small.json()
    assert (await client.post(f"/send/{sid}", body=b"{not json")).status == 400
    assert (await client.post(f"/send/{sid}", body=b"")).status == 400
    assert (await client.post("/send/nope", body=body)).status == 404
