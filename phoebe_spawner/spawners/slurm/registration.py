"""The hub side of endpoint registration for Slurm jobs: a short-lived, one-shot listener.

A :class:`~phoebe_spawner.spawners.slurm.SlurmSpawner` opens one
:class:`RegistrationListener` per start, before it submits the job, and closes it as
soon as the job's agent (:mod:`phoebe_kernel_worker.node_agent`) has registered or
the start has failed. The listener binds on the hub's cluster-facing address
(``SlurmSpawner.registration_ip``), on an ephemeral port or one from
``registration_port_range``, and accepts exactly one report signed with the start's
one-time token; anything else (bad signature, another session, malformed endpoints) is
answered ``denied`` and logged without its content. Nothing here blocks the loop: it is
an ``asyncio`` server with a size limit and a read timeout per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import random
import re
from typing import Any

from phoebe_kernel_worker import protocol
from phoebe_kernel_worker.protocol.registration import MAX_REGISTRATION_BYTES, verify_registration

log = logging.getLogger(__name__)

READ_TIMEOUT = 10.0
_TCP_ENDPOINT = re.compile(r"^tcp://(\[[0-9a-fA-F:.]+\]|[0-9.]+):(\d{1,5})$")


class RegistrationError(Exception):
    """The listener could not be opened (no free port, address not available)."""


def check_endpoints(raw: Any) -> dict[str, str]:
    """The three channel endpoints of a report, each ``tcp://<ip>:<port>``; else ValueError.

    Only literal, non-wildcard addresses are accepted: the hub connects to exactly what
    the worker bound, never to a name or a ``0.0.0.0`` it would have to guess about.
    """
    if not isinstance(raw, dict):
        raise ValueError("endpoints must be an object")
    endpoints: dict[str, str] = {}
    for channel in protocol.CHANNELS:
        value = raw.get(channel)
        match = _TCP_ENDPOINT.match(value) if isinstance(value, str) else None
        if match is None or not isinstance(value, str):
            raise ValueError(f"the {channel} endpoint is not tcp://<ip>:<port>")
        address = ipaddress.ip_address(match.group(1).strip("[]"))
        if address.is_unspecified or not 0 < int(match.group(2)) < 65536:
            raise ValueError(f"the {channel} endpoint is not a usable address")
        endpoints[channel] = value
    return endpoints


class RegistrationListener:
    """One-shot listener for one session start (see the module docstring)."""

    def __init__(
        self,
        *,
        session_id: str,
        token: str,
        host: str,
        port_range: tuple[int, int] | None = None,
    ) -> None:
        self.session_id = session_id
        self._token = token
        self.host = host
        self.port_range = port_range
        self.port = 0
        self.denied = 0
        self._server: asyncio.Server | None = None
        self._report: asyncio.Future[dict[str, Any]] | None = None

    @property
    def address(self) -> str:
        """``host:port`` for the agent (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def start(self) -> str:
        """Bind and listen; returns :attr:`address`."""
        self._report = asyncio.get_running_loop().create_future()
        ports = [0]
        if self.port_range:
            lo, hi = self.port_range
            ports = list(range(lo, hi))
            random.shuffle(ports)
        for port in ports:
            try:
                self._server = await asyncio.start_server(
                    self._handle, self.host, port, limit=MAX_REGISTRATION_BYTES, backlog=16
                )
                break
            except OSError as e:
                if e.errno == errno.EADDRINUSE and port != ports[-1]:
                    continue
                raise RegistrationError(
                    f"cannot listen for the worker's registration on {self.host}:{port}: "
                    f"{e.strerror}"
                ) from e
        assert self._server is not None
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.address

    async def report(self) -> dict[str, Any]:
        """Wait for the one valid registration: ``{"endpoints", "pid", "job_id", "host"}``."""
        assert self._report is not None, "start() first"
        return await asyncio.shield(self._report)

    @property
    def report_future(self) -> asyncio.Future[dict[str, Any]]:
        assert self._report is not None, "start() first"
        return self._report

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answer = b"denied\n"
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            fields = verify_registration(self._token, line)
            if fields.get("session_id") != self.session_id:
                raise ValueError("registration for another session")
            report = {
                "endpoints": check_endpoints(fields.get("endpoints")),
                "pid": int(fields.get("pid") or 0),
                "job_id": str(fields.get("job_id") or ""),
                "host": str(fields.get("host") or "")[:255],
            }
            assert self._report is not None
            if self._report.done():
                raise ValueError("the one registration of this start was already made")
            self._report.set_result(report)
            answer = b"ok\n"
        except (ValueError, TypeError, TimeoutError, asyncio.LimitOverrunError) as e:
            self.denied += 1
            peer = writer.get_extra_info("peername")
            log.warning("session %s: denied a registration from %s: %s", self.session_id, peer, e)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        try:
            writer.write(answer)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        if answer == b"ok\n":
            await self.close()

    async def close(self) -> None:
        """Stop listening (idempotent); a pending :meth:`report` is cancelled."""
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
        if self._report is not None and not self._report.done():
            self._report.cancel()
