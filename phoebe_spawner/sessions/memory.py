"""Memory sampling: what each worker uses, its recent history, and the memory limit.

The session manager's memory loop calls :func:`sample_all` every ``memory_interval``;
``/dash/session-memory`` calls :func:`sample` for one session. Samples are kept in the
session (``mem_history``, for the admin page's plots) and in the database
(``session_metrics``); a session over its spawner's ``mem_limit`` is failed.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from phoebe_kernel_worker import protocol
from phoebe_kernel_worker.errors import out_of_memory

from ..channels import ChannelError
from ..db import DatabaseUnavailable
from .session import LiveSession

if TYPE_CHECKING:
    from .manager import SessionManager


async def sample(s: LiveSession) -> float:
    """Ask the worker for its process-tree memory in MiB (does not count as activity)."""
    if s.status == "running" and s.channel is not None:
        try:
            status = await s.channel.control(protocol.STATUS_REQUEST, timeout=2)
            s.mem_used = float(status.get("rss_mib", s.mem_used))
        except ChannelError:
            pass
    return s.mem_used


async def sample_all(manager: SessionManager) -> None:
    """Memory loop: sample every running session, record it, enforce ``mem_limit``."""
    running = [s for s in manager.sessions.values() if s.status == "running"]
    await asyncio.gather(*(sample(s) for s in running))
    now = time.time()
    for s in running:
        s.mem_history.append((now, s.mem_used))
    manager.notify_sampled(running)
    store_ok = True
    for s in running:
        if store_ok:
            try:
                await manager.store.record_metric(s.id, now, s.mem_used)
            except DatabaseUnavailable:
                store_ok = False
        limit = s.spawner.mem_limit
        if limit and s.mem_used * 1024 * 1024 > limit and s.status == "running":
            reason = f"{out_of_memory(limit)}: the worker used {s.mem_used:.0f} MiB"
            await manager.fail(s, reason)
