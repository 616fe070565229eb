"""Restart recovery: re-adopting the workers a previous hub left running.

Called once at start-up through :meth:`SessionManager.recover`. A worker is
re-adopted only if its spawner says it is alive (for the local backend: same pid
*and* process start time) *and* it answers a signed status request on its control
channel; never by matching command lines. A command it is still running for the
previous hub is interrupted. Everything else is marked failed with the reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from phoebe_kernel_worker import protocol

from ..auth.base import User
from ..channels import ChannelError
from .session import ACTIVE, LiveSession

if TYPE_CHECKING:
    from .manager import SessionManager


async def recover(manager: SessionManager, users: Callable[[dict[str, Any]], User]) -> None:
    """Re-adopt or fail every session a previous hub recorded as live.

    ``users`` maps a session row to its owner.
    """
    rows = await manager.store.list_sessions(statuses=ACTIVE)
    await asyncio.gather(*(recover_one(manager, row, users(row)) for row in rows))


async def recover_one(manager: SessionManager, row: dict[str, Any], user: User) -> None:
    """Re-adopt one session's worker, or mark the session failed with the reason."""
    sid = row["id"]
    spawner = manager.make_spawner(sid, user)
    spawner.load_state(row.get("spawner_state") or {})
    s = LiveSession(
        id=sid,
        user=user,
        meta=row.get("meta") or {},
        spawner=spawner,
        status="pending",
        created_at=row["created_at"],
        last_activity=row.get("last_activity") or row["created_at"],
        port=row.get("port"),
        command_count=row.get("command_count") or 0,
    )
    s.persisted_activity = s.last_activity
    s.launched.set()
    if not manager.readopt_workers:
        manager.sessions[sid] = s
        await manager.fail(s, "the hub restarted and does not re-adopt workers")
        return
    alive = row["status"] == "running" and await spawner.poll() is None
    if alive and spawner.endpoint is not None:
        channel = manager.connect(s, spawner.endpoint)
        try:
            status = await channel.control(
                protocol.STATUS_REQUEST, timeout=manager.recover_ping_timeout
            )
            if status.get("state") == "busy" and status.get("msg_id"):
                # a command of the previous hub (its job was marked failed): stop it, so
                # the user's next command does not queue behind work nobody follows
                manager.log.info(
                    "interrupting an orphaned %s in session %s", status.get("command"), sid
                )
                await channel.control(
                    protocol.INTERRUPT_REQUEST, {"msg_id": status["msg_id"]}, timeout=5
                )
        except ChannelError:
            manager.sessions[sid] = s
            await manager.fail(s, "worker did not answer after the hub restarted")
            return
        s.status = "running"
        s.readopted = True
        s.started_at = row.get("started_at") or time.time()
        manager.sessions[sid] = s
        manager.log.info("re-adopted session %s of %s", sid, user.name)
        manager.emit("started", s)
        return
    manager.sessions[sid] = s
    await manager.fail(s, "worker was lost while the hub was down")
