"""Running one command on a session's worker: queueing, timeouts, and the command log.

``SessionManager.send`` (``/send``) and ``SessionManager.execute`` (``/send``, jobs,
checkpoints) come here. Commands to one session run one at a time, in arrival order
(the session's lock); a command that exceeds its timeout is interrupted in the worker
(``endings.recover_from_timeout``) and the caller gets :class:`CommandTimedOut`.
This is the hub's hot path: no database wait (the log is batched), no copies of the
body or the reply.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from phoebe_kernel_worker import protocol

from ..channels import ChannelBusy, ChannelClosed, ChannelError, ChannelTimeout, Reply
from ..errors import CommandTimedOut, Unavailable
from . import endings
from .session import LiveSession

if TYPE_CHECKING:
    from .manager import SessionManager


async def control_ping(s: LiveSession) -> Reply:
    """``ping`` while a command runs: the worker's status from the control channel."""
    assert s.channel is not None
    try:
        await s.channel.control(protocol.STATUS_REQUEST, timeout=5)
    except ChannelError as e:
        raise Unavailable(s.reason or f"Worker unavailable: {e}") from None
    return Reply({"status": "ok"}, b'{"success":true,"result":{"status":"ready"}}')


async def execute(
    manager: SessionManager,
    s: LiveSession,
    body: bytes,
    command: str,
    *,
    timeout: float | None,
    on_sent: Callable[[str], None] | None = None,
    activity: bool = True,
    count_wait: bool = True,
) -> Reply:
    """Run one command on ``s`` after the commands before it (``/send`` and jobs).

    ``timeout`` counts the wait for earlier commands unless ``count_wait`` is False
    (jobs: their limit counts from their start); ``None`` waits for ever. On a timeout
    the command is interrupted in the worker and :class:`CommandTimedOut` raised, its
    ``recovery`` the task that stops the worker if it ignores the interrupt.
    ``on_sent(msg_id)`` is called once the command is on its way to the worker.
    ``activity=False`` (the hub's own commands, e.g. checkpoints) leaves the session's
    idle time alone.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    s.in_flight += 1
    last_activity = s.last_activity
    started = time.time()
    release = True
    try:
        try:
            if s.lock.locked():  # wait_for wraps the acquire in a task: only when needed
                await asyncio.wait_for(s.lock.acquire(), timeout if count_wait else None)
            else:
                await s.lock.acquire()
        except TimeoutError:
            raise CommandTimedOut(
                f"Command '{command}' waited {timeout:g} s for the session's previous command"
            ) from None
        try:
            manager.check_running(s)
            assert s.channel is not None
            if not count_wait and timeout is not None:
                deadline = time.monotonic() + timeout
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            cpu = manager.cpu  # None unless cpu_isolation is on: checked first, it is cheaper
            if cpu is not None and command not in manager.background_commands:
                cpu = None
            if cpu is not None:
                cpu.background(s.id, True)  # one small cgroup write: interactive work first
            try:
                reply = await s.channel.execute(body, timeout=remaining, on_sent=on_sent)
            finally:
                if cpu is not None:
                    cpu.background(s.id, False)
        except ChannelTimeout as e:
            release = False  # the recovery task owns the lock until the worker is idle again
            recovery = manager.spawn_task(
                endings.recover_from_timeout(manager, s, e.msg_id, command)
            )
            log_command(manager, s, command, started, False, "timeout")
            error = CommandTimedOut(
                f"Command '{command}' exceeded its timeout of {timeout:g} s and was interrupted"
            )
            error.recovery = recovery
            raise error from None
        except (ChannelClosed, ChannelBusy) as e:
            raise Unavailable(s.reason or f"Worker unavailable: {e}") from None
        finally:
            if release:
                s.lock.release()
    finally:
        s.in_flight -= 1
        s.last_activity = time.time() if activity else last_activity
    s.command_count += 1
    if reply.status == "ok":
        log_command(manager, s, command, started, True, None)
    else:
        message = failure_message(reply)
        manager.log.info(
            "session %s of %s: %s failed: %.300s", s.id, s.user.name, command[:64], message
        )
        log_command(manager, s, command, started, False, message)
    return reply


def failure_message(reply: Reply) -> str:
    """What a reply that did not succeed says (PHOEBE's error message, or the status),
    at most :data:`ERROR_CHARS` characters: for the log, the command log and the admin
    page, where an operator reads why a user's command failed."""
    try:
        content = reply.json()
        message = content.get("error") if isinstance(content, dict) else None
    except ValueError:
        message = None
    text = str(message) if message else reply.status
    return text[:ERROR_CHARS]


#: longest error message kept per command (the command log's column holds 1000)
ERROR_CHARS = 1000


def log_command(
    manager: SessionManager,
    s: LiveSession,
    command: str,
    started: float,
    success: bool,
    error: str | None,
) -> None:
    """Record a finished command: on the session, in the batched command log, and for
    the command listeners (metrics, the admin stream)."""
    seconds = time.time() - started
    s.last_command = command[:64]
    s.last_command_ms = 1000 * seconds
    if error is not None:
        s.last_error = f"{s.last_command}: {error}"[:ERROR_CHARS]
    manager.store.log_command(
        session_id=s.id,
        user_id=s.user.user_id,
        command=s.last_command,
        started_at=started,
        duration_ms=s.last_command_ms,
        success=success,
        error=error,
    )
    for listener in manager._command_listeners:
        try:
            listener(s, s.last_command, seconds, error)
        except Exception:
            manager.log.exception("command listener failed")
