"""Restart recovery: re-adopting the workers a previous hub left running.

Run once at start-up by :meth:`SessionManager.recover
<phoebe_spawner.sessions.manager.SessionManager.recover>`, which hands :class:`Recovery`
the stored rows, its registry, what sessions need (spawners, services) and the function
that connects a session's channel; :meth:`Recovery.register` puts a :class:`Session` for
each row (its spawner's state loaded) in the registry. A worker is
re-adopted only if its spawner says it is alive (for the local backend: same pid *and*
process start time) *and* it answers a signed status request on its control channel;
never by matching command lines. A command it is still running for the previous hub is
interrupted (a worker that ignores that is declared hung). Everything else is marked
failed with the reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from phoebe_kernel_worker import protocol

from ..auth.base import User
from ..channels import ChannelError, WorkerChannel, WorkerEndpoint
from ..spawners.base import Spawner
from .services import SessionServices
from .session import Session


@dataclass
class Recovery:
    """Re-adopts (or fails) the sessions of a previous hub; see the module docstring."""

    #: a spawner of the configured class for a session (SessionManager.make_spawner)
    make_spawner: Callable[[str, User], Spawner]
    #: what every session uses of the hub (SessionManager.services)
    services: SessionServices
    #: the manager's registry, which re-adopted (and failed) sessions join
    registry: dict[str, Session]
    #: opens a session's channel to the endpoint its spawner recorded
    connect: Callable[[Session, WorkerEndpoint], WorkerChannel]
    #: whether to re-adopt at all (SessionManager.readopt_workers)
    readopt: bool
    #: seconds a worker has to answer (SessionManager.recover_ping_timeout)
    ping_timeout: float
    log: Any

    async def run(
        self, rows: list[dict[str, Any]], users: Callable[[dict[str, Any]], User]
    ) -> None:
        """Re-adopt or fail every session in ``rows`` (``users`` maps a row to its owner)."""
        await asyncio.gather(*(self.recover_one(row, users(row)) for row in rows))

    def register(self, row: dict[str, Any], user: User) -> Session:
        """Register the session of a stored row, its spawner's state loaded."""
        spawner = self.make_spawner(row["id"], user)
        spawner.load_state(row.get("spawner_state") or {})
        s = Session(
            row["id"],
            user,
            row.get("meta") or {},
            spawner,
            self.services,
            created_at=row["created_at"],
            last_activity=row.get("last_activity") or row["created_at"],
            port=row.get("port"),
            command_count=row.get("command_count") or 0,
        )
        self.registry[s.id] = s
        return s

    async def recover_one(self, row: dict[str, Any], user: User) -> None:
        """Re-adopt one session's worker, or mark the session failed with the reason."""
        s = self.register(row, user)
        s.persisted_activity = s.last_activity
        s.launched.set()
        if not self.readopt:
            await s.fail("the hub restarted and does not re-adopt workers")
            return
        alive = row["status"] == "running" and await s.spawner.poll() is None
        endpoint = s.spawner.endpoint
        if not alive or endpoint is None:
            await s.fail("worker was lost while the hub was down")
            return
        channel = self.connect(s, endpoint)
        try:
            status = await channel.control(protocol.STATUS_REQUEST, timeout=self.ping_timeout)
        except ChannelError:
            await s.fail("worker did not answer after the hub restarted")
            return
        if status.get("state") == "busy" and status.get("msg_id"):
            # a command of the previous hub (its job was marked failed): stop it, so the
            # user's next command does not queue behind work nobody follows
            command = str(status.get("command"))
            self.log.info("interrupting an orphaned %s in session %s", command, s.id)
            async with s.lock:
                left = await s.interrupt_or_fail(
                    str(status["msg_id"]), command, cause="an interrupt"
                )
            if not left:
                if s.status != "failed":
                    await s.fail("worker did not answer after the hub restarted")
                return
        await s.readopt(row.get("started_at") or time.time())
        self.log.info("re-adopted session %s of %s", s.id, user.name)
