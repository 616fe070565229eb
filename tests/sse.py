"""A minimal Server-Sent Events client for tests, on a raw socket.

Speaks HTTP/1.0 so the stream arrives unchunked, and can be dropped at any moment
(to test that the hub cleans up after a client that disappears).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson


class SSEStream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.comments: list[str] = []
        self._buffer = b""

    @classmethod
    async def open(
        cls,
        base_url: str,
        path: str,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> SSEStream:
        host_port = base_url.split("://", 1)[1].rstrip("/")
        host, _, port = host_port.partition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        lines = [f"GET {path} HTTP/1.0", f"Host: {host_port}", "Accept: text/event-stream"]
        if token:
            lines.append(f"Authorization: Bearer {token}")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        stream = cls(reader, writer)
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode().split("\r\n")
        stream.status = int(status_line.split()[1])
        for line in header_lines:
            if ":" in line:
                k, _, v = line.partition(":")
                stream.headers[k.strip().lower()] = v.strip()
        return stream

    async def body(self) -> bytes:
        return self._buffer + await self.reader.read()

    async def next_event(self, timeout: float = 30) -> dict[str, Any] | None:
        """The next event as {id, event, data}; None when the stream ended."""
        while True:
            while b"\n\n" in self._buffer:
                block, self._buffer = self._buffer.split(b"\n\n", 1)
                event = self._parse(block.decode())
                if event is not None:
                    return event
            chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not chunk:
                return None
            self._buffer += chunk

    def _parse(self, block: str) -> dict[str, Any] | None:
        event: dict[str, Any] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
            elif line.startswith("id: "):
                event["id"] = int(line[4:])
            elif line.startswith("event: "):
                event["event"] = line[7:]
            elif line.startswith("data: "):
                event["data"] = orjson.loads(line[6:])
        return event if "event" in event else None

    async def events_until_end(self, timeout: float = 60) -> list[dict[str, Any]]:
        events = []
        while (event := await self.next_event(timeout)) is not None:
            events.append(event)
        return events

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
