"""One live session as the hub sees it, and small helpers about sessions.

:class:`LiveSession` is owned by the session manager (``phoebe_spawner.sessions``) and
read by the job manager and the handlers.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..auth.base import User
from ..channels import WorkerChannel
from ..spawners.base import Spawner

#: Statuses of a session that holds (or is about to hold, or still holds) a worker.
ACTIVE = ("pending", "running", "stopping")


@dataclass(eq=False)
class LiveSession:
    """One session as the hub sees it while it is alive (and a while after it failed)."""

    id: str
    user: User
    meta: dict[str, Any]
    spawner: Spawner
    status: str = "pending"
    created_at: float = field(default_factory=time.time)
    last_activity: float = field(default_factory=time.time)
    port: int | None = None
    mem_used: float = 0.0
    in_flight: int = 0
    command_count: int = 0
    reason: str | None = None
    channel: WorkerChannel | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    stop_task: asyncio.Task[None] | None = None
    persisted_activity: float = 0.0
    ended_at: float | None = None
    launched: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float | None = None
    #: re-adopted from a previous hub (its start was not this hub's)
    readopted: bool = False
    last_command: str | None = None
    last_command_ms: float | None = None
    #: "<command>: <message>" of the last command that did not succeed (admin page)
    last_error: str | None = None
    #: recent (unix time, MiB) memory samples, for the admin page's plots
    mem_history: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=120))

    @property
    def project_name(self) -> str | None:
        name = self.meta.get("project_name")
        return str(name) if name is not None else None

    def to_api(self) -> dict[str, Any]:
        """The compatible API's session object."""
        return {
            "session_id": self.id,
            "created_at": self.created_at,
            "last_activity": self.last_activity,
            "mem_used": round(self.mem_used, 3),
            "port": self.port,
            "user_id": self.user.user_id,
            "full_name": self.user.full_name,
            "project_name": self.project_name,
            "status": self.status,
            "reason": self.reason,
            "command_count": self.command_count,
            "metadata": self.meta,
        }

    def to_admin(self, now: float) -> dict[str, Any]:
        """The admin view: the API object plus owner, age, idle time, last command and
        the recent memory history (``[[unix time, MiB], ...]``)."""
        data = self.to_api()
        data.update(
            user_name=self.user.name,
            started_at=self.started_at,
            age=now - self.created_at,
            idle=now - self.last_activity,
            busy=self.in_flight > 0,
            last_command=self.last_command,
            last_command_ms=None
            if self.last_command_ms is None
            else round(self.last_command_ms, 1),
            last_error=self.last_error,
            mem_history=[[round(t, 1), round(m, 2)] for t, m in self.mem_history],
        )
        return data


def describe_exit(status: int | None) -> str:
    """A human reason for a worker's exit status."""
    if status is None:
        return "worker stopped"
    if status < 0:
        try:
            return f"worker was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"worker was killed by signal {-status}"
    return f"worker exited with status {status}"


def user_dir_name(value: str) -> str:
    """A filesystem-safe, collision-free directory name for a user id."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", value)[:48].lstrip(".") or "_"
    if safe == value:
        return safe
    return f"{safe}-{uuid.uuid5(uuid.NAMESPACE_URL, value).hex[:8]}"
