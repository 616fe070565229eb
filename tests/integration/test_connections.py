"""Connection-level limits with raw sockets: the global cap gives way to legitimate
requests, the per-address cap (by TCP peer, or by the real client behind a trusted
proxy), and the header timeout. Clients bind 127.0.0.x source addresses to look like
many hosts (all of 127/8 is loopback on Linux)."""

from __future__ import annotations

import asyncio

from ..waiting import async_wait_for

PARTIAL = b"GET /health HTTP/1.1\r\nHost: x\r\n"  # headers that never end
#: a request whose headers are complete and whose body never comes: busy, not waiting
BUSY = b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(port: int, source: str = "127.0.0.1", data: bytes = b"") -> Conn:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    if data:
        writer.write(data)
        await writer.drain()
    return reader, writer


async def health(port: int, source: str = "127.0.0.1", headers: bytes = b"") -> bytes:
    """One complete GET /health from ``source``: the whole response, up to the close."""
    reader, writer = await connect(
        port,
        source,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers + b"\r\n",
    )
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def close_all(conns) -> None:
    for _reader, writer in conns:
        writer.close()


async def test_a_flood_of_half_open_connections_from_many_addresses_gives_way(make_hub):
    app, _client = await make_hub(
        PhoebeSpawnerApp__max_connections=40, PhoebeSpawnerApp__max_connections_per_ip=2
    )
    server, port = app.http_server, app.bound_port
    flood = []
    try:
        for i in range(80):  # twice the cap, from forty addresses, none finishing its headers
            flood.append(await connect(port, f"127.0.0.{2 + i // 2}", PARTIAL))
        await async_wait_for(lambda: server.evicted == 40, "40 idle connections to be evicted")
        for _ in range(10):
            reply = await health(port)
            assert reply.startswith(b"HTTP/1.1 200"), reply
        assert server.refused == 0 and server.refused_per_ip == 0
    finally:
        await close_all(flood)


async def test_the_global_cap_refuses_when_every_connection_is_busy(make_hub):
    app, _client = await make_hub(PhoebeSpawnerApp__max_connections=3)
    port = app.bound_port
    busy = [await connect(port, f"127.0.0.{2 + i}", BUSY) for i in range(3)]
    try:
        await async_wait_for(
            lambda: not app.http_server._waiting, "the waiting connections to be refused"
        )
        reply = await health(port)
        assert reply.startswith(b"HTTP/1.1 503")
        assert reply.endswith(b'{"detail": "Too many connections, try again shortly"}')
    finally:
        await close_all(busy)
    await async_wait_for(lambda: not app.http_server._open, "every connection to close")
    assert (await health(port)).startswith(b"HTTP/1.1 200")


async def test_per_address_cap(make_hub):
    app, _client = await make_hub(PhoebeSpawnerApp__max_connections_per_ip=3)
    port = app.bound_port
    held = [await connect(port, "127.0.0.2", PARTIAL) for _ in range(3)]
    try:
        reply = await health(port, "127.0.0.2")
        assert reply.startswith(b"HTTP/1.1 429")
        assert reply.endswith(
            b'{"detail": "Too many connections from your address (at most 3); '
            b'close some and retry"}'
        )
        assert app.http_server.refused_per_ip == 1
        assert (await health(port, "127.0.0.3")).startswith(b"HTTP/1.1 200")  # another host
        held.pop()[1].close()
        await async_wait_for(
            lambda: app.http_server._per_key["127.0.0.2"] == 2, "two connections from 127.0.0.2"
        )
        assert (await health(port, "127.0.0.2")).startswith(b"HTTP/1.1 200")
    finally:
        await close_all(held)


async def test_slow_headers_are_cut_after_the_header_timeout(make_hub):
    app, _client = await make_hub(PhoebeSpawnerApp__header_timeout=0.5)
    port = app.bound_port
    slow_reader, slow = await connect(port, "127.0.0.2", PARTIAL)
    # a keep-alive connection that finished a request is under the idle timeout instead
    kept_reader, kept = await connect(port, "127.0.0.3", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        first = await asyncio.wait_for(kept_reader.readuntil(b'["frames"]}'), 10)
        assert first.startswith(b"HTTP/1.1 200")
        reply = await asyncio.wait_for(slow_reader.read(), 10)  # up to the hub's close
        assert reply.startswith(b"HTTP/1.1 408")
        assert reply.endswith(b'{"detail": "Request headers not received in time"}')
        assert app.http_server.timed_out == 1
        await asyncio.sleep(0.6)  # past the header timeout, well within the idle one
        kept.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        again = await asyncio.wait_for(kept_reader.readuntil(b'["frames"]}'), 10)
        assert again.startswith(b"HTTP/1.1 200") and app.http_server.timed_out == 1
    finally:
        slow.close()
        kept.close()


async def test_behind_a_trusted_proxy_the_cap_counts_real_clients(make_hub):
    app, _client = await make_hub(
        PhoebeSpawnerApp__trust_proxy_headers=True, PhoebeSpawnerApp__max_connections_per_ip=2
    )
    port = app.bound_port
    # everything comes from the proxy's one address: the TCP cap does not apply to it
    forwarded = b"X-Forwarded-For: 198.51.100.1, 203.0.113.5\r\n"
    busy = BUSY.replace(b"Host: x\r\n", b"Host: x\r\n" + forwarded)
    held = [await connect(port, data=busy) for _ in range(2)]
    held += [await connect(port, data=PARTIAL) for _ in range(3)]
    try:
        await async_wait_for(
            lambda: app.http_server._per_client["203.0.113.5"] == 2,
            "two connections from 203.0.113.5",
        )
        reply = await health(port, headers=forwarded)
        assert reply.startswith(b"HTTP/1.1 429")
        assert reply.endswith(
            b'{"detail": "Too many requests from your address (at most 2); close some and retry"}'
        )
        other = await health(port, headers=b"X-Real-Ip: 203.0.113.6\r\n")
        assert other.startswith(b"HTTP/1.1 200")
    finally:
        await close_all(held)
    await async_wait_for(
        lambda: not app.http_server._per_client, "every client's connections to close"
    )
    assert (await health(port, headers=forwarded)).startswith(b"HTTP/1.1 200")


async def test_a_slow_body_is_cut_after_the_body_timeout_and_a_finished_one_is_not(make_hub):
    app, _client = await make_hub(PhoebeSpawnerApp__body_timeout=1)
    server, port = app.http_server, app.bound_port
    # a keep-alive request whose body came whole: its timeout must not outlive the body
    done_reader, done = await connect(
        port,
        "127.0.0.3",
        b"POST /auth/logout HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\n\r\n{}",
    )
    first = await asyncio.wait_for(done_reader.readuntil(b"true}"), 10)
    assert first.startswith(b"HTTP/1.1 200")
    # started after the first request's body was in, so its timer fires after that one's
    slow_reader, slow = await connect(port, "127.0.0.2", BUSY)
    try:
        await async_wait_for(lambda: server.body_timed_out == 1, "the slow body to be cut")
        assert await asyncio.wait_for(slow_reader.read(), 10) == b""  # closed, no answer
        done.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        again = await asyncio.wait_for(done_reader.readuntil(b'["frames"]}'), 10)
        assert again.startswith(b"HTTP/1.1 200") and server.body_timed_out == 1
        assert all(c.body_timer is None for c in server._open.values())
    finally:
        slow.close()
        done.close()
