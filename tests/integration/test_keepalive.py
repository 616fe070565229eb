"""Error answers never break a reused connection.

A client that keeps its connection open (``requests.Session``, browsers) sends its next
request on the connection that just carried an error. The hub must then either keep
the connection usable (small bodies are read whole before any error is answered) or
say ``Connection: close`` (a large body refused before it was read), never close it
silently: that is a reset on the client's next request.

Each error path runs :data:`ROUNDS` times, each error followed at once by a request on
the same connection, through :mod:`http.client` (which reuses a connection unless told
``Connection: close``).
"""

from __future__ import annotations

import asyncio
import http.client
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
import pytest

from ..conftest import register

ROUNDS = 200


@dataclass
class Tally:
    """What one error path did over its rounds."""

    statuses: set[int] = field(default_factory=set)
    resets: list[str] = field(default_factory=list)
    closed_by_server: int = 0  # error answers that said Connection: close
    reused: int = 0  # follow-up requests that went over the same connection


Request = Callable[[http.client.HTTPConnection], None]


def run_rounds(port: int, send_error: Request, follow_up: Request, rounds: int) -> Tally:
    """``rounds`` times: the error request, then the follow-up on the same connection."""
    tally = Tally()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for _ in range(rounds):
            try:
                send_error(conn)
                resp = conn.getresponse()
                resp.read()
                tally.statuses.add(resp.status)
                if resp.will_close:
                    tally.closed_by_server += 1
                    conn.close()  # as every keep-alive client does on Connection: close
                sock_before = conn.sock
                follow_up(conn)
                follow = conn.getresponse()
                follow.read()
                assert follow.status == 200, follow.status
                if sock_before is not None and conn.sock is sock_before:
                    tally.reused += 1
            except (ConnectionError, http.client.HTTPException) as e:
                tally.resets.append(type(e).__name__)
                conn.close()
    finally:
        conn.close()
    return tally


def health(conn: http.client.HTTPConnection) -> None:
    conn.request("GET", "/health")


def json_request(
    method: str, path: str, body: object = None, token: str | None = None, raw: bytes | None = None
) -> Request:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)

    def send(conn: http.client.HTTPConnection) -> None:
        conn.request(method, path, body=data, headers=headers)

    return send


def oversized(path: str, token: str, size: int) -> Request:
    """A POST that declares a body over the limit and sends only its headers."""

    def send(conn: http.client.HTTPConnection) -> None:
        conn.putrequest("POST", path)
        conn.putheader("Authorization", f"Bearer {token}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()

    return send


async def test_error_answers_keep_reused_connections_working(make_hub):
    app, client = await make_hub(
        auth_mode="jwt",
        SessionManager__max_sessions_per_user=1,
        PhoebeSpawnerApp__max_body_size=1024 * 1024,
    )
    ada = await register(client, "ada@example.org")
    bob = await register(client, "bob@example.org")
    sid = (await client.post("/dash/start-session", {}, token=ada)).json()["session_id"]
    send = f"/send/{sid}"
    paths: dict[str, tuple[int, Request]] = {
        "GET 401": (401, json_request("GET", "/dash/sessions")),
        "POST 401": (401, json_request("POST", send, {"command": "ping"})),
        "403": (403, json_request("POST", send, {"command": "ping"}, token=bob)),
        "GET 404": (404, json_request("GET", "/no/such/page", token=ada)),
        "POST 404": (404, json_request("POST", "/send/nope", {"command": "ping"}, token=ada)),
        "405": (405, json_request("PUT", "/health", raw=b"")),
        "400": (400, json_request("POST", send, token=ada, raw=b'{"command": ')),
        "429": (429, json_request("POST", "/dash/start-session", {}, token=ada)),
        "413": (413, oversized(send, ada, 64 * 1024 * 1024)),
    }
    results: dict[str, Tally] = {}
    for name, (_, request) in paths.items():
        results[name] = await asyncio.to_thread(run_rounds, app.bound_port, request, health, ROUNDS)
    for name, (status, _) in paths.items():
        tally = results[name]
        assert tally.statuses == {status}, (name, tally.statuses)
        assert tally.resets == [], (name, tally.resets[:5], len(tally.resets))
    # small requests keep their connection; only the unread large body closes it, saying so
    for name in paths:
        expect_closed = ROUNDS if name == "413" else 0
        assert results[name].closed_by_server == expect_closed, (name, results[name])
        assert results[name].reused == ROUNDS - expect_closed, (name, results[name])


async def test_503_keeps_the_connection(make_hub):
    app, _ = await make_hub(
        PhoebeSpawnerApp__spawner_class="local-forkserver",
        LocalProcessSpawner__worker_extra={"fail_start": "no licence"},
        SessionManager__failed_linger=0,
    )
    tally = await asyncio.to_thread(
        run_rounds, app.bound_port, json_request("POST", "/dash/start-session", {}), health, ROUNDS
    )
    assert tally.statuses == {503}
    assert tally.resets == []
    assert tally.closed_by_server == 0 and tally.reused == ROUNDS


@pytest.mark.parametrize("chunked", [False, True], ids=["sized", "chunked"])
async def test_streamed_error_says_connection_close(make_hub, chunked):
    """A large or chunked body refused before it is read: the answer says so."""
    app, _ = await make_hub(auth_mode="jwt")

    def send(conn: http.client.HTTPConnection) -> None:
        conn.putrequest("POST", "/send/whatever")
        conn.putheader("Content-Type", "application/json")
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        else:
            conn.putheader("Content-Length", str(10 * 1024 * 1024))
        conn.endheaders()

    tally = await asyncio.to_thread(run_rounds, app.bound_port, send, health, 20)
    assert tally.statuses == {401} and tally.resets == []
    assert tally.closed_by_server == 20
