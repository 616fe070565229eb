"""Attacks on the hub's connections: half-open connections from many loopback addresses,
and more than the per-address cap from one, while the victim keeps opening new ones.
Part of benchmarks/attacks.py's ``Attacks``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from attack_base import AttackBase, Outcome
from attack_harness import PING_BODY, Answer, call, new_client


class ConnectionAttacks(AttackBase):
    """``connection_flood``: connections that never finish their headers."""

    async def connection_flood(
        self, count: int = 500, addresses: int = 50, one_address: int = 80, hold: float = 11.0
    ) -> Outcome:
        """``count`` connections that never finish their headers, spread over
        ``addresses`` loopback addresses, plus ``one_address`` from one more address
        (above the per-address cap); meanwhile the victim opens new connections."""
        writers: list[asyncio.StreamWriter] = []
        readers: list[tuple[str, asyncio.StreamReader]] = []
        sources = [f"127.0.0.{10 + i % addresses}" for i in range(count)]
        sources += ["127.0.0.200"] * one_address

        async def half_open(src: str) -> None:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.hub.port, local_addr=(src, 0)), 5
                )
            except (OSError, TimeoutError):
                return
            writer.write(b"POST /auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            writers.append(writer)
            readers.append((src, reader))

        fresh: list[Answer] = []
        t_open = time.perf_counter()
        try:
            for i in range(0, len(sources), 50):
                await asyncio.gather(*(half_open(s) for s in sources[i : i + 50]))
            opened_s = time.perf_counter() - t_open
            deadline = time.monotonic() + hold
            while time.monotonic() < deadline and len(fresh) < 100:
                # a new client, so a new connection, each time: the flood must not keep
                # newcomers out
                async with new_client(self.victim.token, source="127.0.0.2") as http:
                    fresh.append(
                        await call(
                            http,
                            "POST",
                            f"{self.hub.url}/send/{self.sids['victim']}",
                            PING_BODY,
                            timeout=10,
                        )
                    )
                await asyncio.sleep(0.1)
            answered = await asyncio.gather(*(_first_line(r) for _, r in readers))
        finally:
            for w in writers:
                w.close()
            for w in writers:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(w.wait_closed(), 1)
        per_ip = [a for (src, _), a in zip(readers, answered, strict=True) if src == "127.0.0.200"]
        spread = [a for (src, _), a in zip(readers, answered, strict=True) if src != "127.0.0.200"]
        first = fresh[0] if fresh else Answer(0, b"no request", 0.0)
        return Outcome(
            f"{count} half-open connections from {addresses} addresses + {one_address} from one",
            first,
            clear=bool(fresh) and all(a.status == 200 for a in fresh),
            slowest=max((a.seconds for a in fresh), default=0.0),
            repeats=len(fresh),
            extra={
                "opened": len(writers),
                "opened_s": round(opened_s, 3),
                "spread_answered_while_held": _count(spread),
                "one_address_answered": _count(per_ip),
                "note": "answer = the victim's requests on new connections during the flood",
            },
        )


async def _first_line(reader: asyncio.StreamReader) -> bytes:
    """The hub's first answer line on a half-open connection: its status line, or what
    happened instead (``reset``: refused and closed unread; ``eof``; ``open``: no answer)."""
    try:
        line = await asyncio.wait_for(reader.readline(), 0.5)
    except TimeoutError:
        return b"open"
    except ConnectionResetError:
        return b"reset"
    except OSError:
        return b"error"
    return line or b"eof"


def _count(lines: list[bytes]) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in lines:
        key = line.split(b" ")[1].decode() if line.startswith(b"HTTP/") else line.decode()
        out[key] = out.get(key, 0) + 1
    return out
