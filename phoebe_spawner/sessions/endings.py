"""How sessions end: stopping workers, cleaning up failures, death detection, hung commands.

The :class:`~phoebe_spawner.sessions.SessionManager` delegates here (like
``culling`` and ``recovery``): its ``stop_session``/``fail`` decide *that* a session
ends and run these once; the poll loop calls :func:`poll_all`; a command that timed
out is handed to :func:`recover_from_timeout`. Every path ends in a final status
written to the database and announced to the listeners, never in a session stuck
half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from phoebe_kernel_worker import protocol

from ..channels import ChannelClosed, ChannelError, ChannelTimeout
from .session import ACTIVE, LiveSession, describe_exit

if TYPE_CHECKING:
    from .manager import SessionManager


async def recover_from_timeout(
    manager: SessionManager, s: LiveSession, msg_id: str, command: str
) -> None:
    """Interrupt a timed-out command; stop the worker if it does not come back within
    ``interrupt_grace``. Holds the session's lock until the worker is idle or the session
    failed, so no queued command reaches a hung worker."""
    reason = None
    try:
        assert s.channel is not None
        await s.channel.control(protocol.INTERRUPT_REQUEST, {"msg_id": msg_id}, timeout=5)
        deadline = time.monotonic() + manager.interrupt_grace
        while time.monotonic() < deadline:
            status = await s.channel.control(protocol.STATUS_REQUEST, timeout=2)
            if status.get("msg_id") != msg_id:
                manager.log.info("session %s: timed-out %s interrupted", s.id, command)
                return
            await asyncio.sleep(0.05)
        reason = f"worker hung: '{command}' ignored an interrupt for {manager.interrupt_grace:g} s"
    except ChannelTimeout:
        reason = f"worker hung: no answer on the control channel after '{command}' timed out"
    except ChannelError:
        return  # the worker died or the session ended meanwhile
    finally:
        if reason is None:
            s.lock.release()
    manager.log.warning("session %s: %s; stopping it", s.id, reason)
    try:
        await manager.fail(s, reason)
    finally:
        s.lock.release()


async def poll_all(manager: SessionManager) -> None:
    """Poll loop: a worker that exited marks its session failed, and drops old failures."""
    now = time.time()
    running = [s for s in manager.sessions.values() if s.status == "running"]
    results = await asyncio.gather(*(_poll(manager, s) for s in running))
    for s, status in zip(running, results, strict=True):
        if status is not None and s.status == "running":
            reason = manager.limits.exit_reason(s) or s.spawner.exit_reason(status)
            await manager.fail(s, reason or describe_exit(status))
    for s in list(manager.sessions.values()):
        if s.status not in ACTIVE and s.ended_at and now - s.ended_at > manager.failed_linger:
            manager.sessions.pop(s.id, None)


async def _poll(manager: SessionManager, s: LiveSession) -> int | None:
    try:
        return await asyncio.wait_for(s.spawner.poll(), max(1.0, manager.poll_interval * 5))
    except TimeoutError:
        manager.log.warning("poll of session %s timed out", s.id)
        return None
    except Exception:
        manager.log.exception("poll of session %s failed", s.id)
        return None


async def do_stop(manager: SessionManager, s: LiveSession, final: str, reason: str) -> None:
    """Stop a session's worker (shutdown request, then the spawner) and record ``final``."""
    if s.channel is not None:
        with contextlib.suppress(ChannelError):  # a dead worker cannot answer
            await s.channel.control(protocol.SHUTDOWN_REQUEST, timeout=1)
        await s.channel.close(ChannelClosed(f"session {final}: {reason}"))
    try:
        await s.spawner.stop()
    except Exception:
        manager.log.exception("stopping the worker of session %s failed", s.id)
        try:
            await s.spawner.stop(now=True)
        except Exception as e:
            # e.g. the docker engine is unreachable: never leave the session stuck in
            # "stopping"; it ends failed, and its spawner state stays in the database
            # for the operator (the log says which worker may still be running)
            manager.log.exception("killing the worker of session %s failed too", s.id)
            s.status, s.reason, s.ended_at = (
                "failed",
                f"could not stop the worker: {e}",
                time.time(),
            )
            manager.sessions.pop(s.id, None)
            await manager.write(
                s, status="failed", stopped_at=s.ended_at, termination_reason=s.reason
            )
            manager.emit("failed", s)
            return
    s.spawner.clear_state()
    s.status = final
    s.reason = reason
    s.ended_at = time.time()
    manager.sessions.pop(s.id, None)
    await manager.write(
        s, status=final, stopped_at=s.ended_at, termination_reason=reason, spawner_state={}
    )
    manager.emit(final, s)


async def clean_up_failed(manager: SessionManager, s: LiveSession, reason: str) -> None:
    """Close the channel, kill the worker and record a failure (``fail`` runs it shielded)."""
    if s.channel is not None:
        await s.channel.close(ChannelClosed(reason))
    await manager.write(s, status="failed", termination_reason=reason, stopped_at=s.ended_at)
    try:
        await s.spawner.stop(now=True)
    except Exception:
        manager.log.exception("cleaning up the worker of failed session %s failed", s.id)
    s.spawner.clear_state()
    await manager.write(s, spawner_state={})
    manager.emit("failed", s)
