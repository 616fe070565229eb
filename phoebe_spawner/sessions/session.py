"""One session: its worker's channel, its status, its command queue and its ending.

A :class:`Session` is created and registered by the
:class:`~phoebe_spawner.sessions.manager.SessionManager` (a start, or a re-adoption at
start-up) and is then driven through its own methods: :meth:`Session.run` (one command,
in its turn), :meth:`Session.interrupt_or_fail` (a command that must stop: timeouts, job
cancels, orphans found at recovery), :meth:`Session.stop` and :meth:`Session.fail`.
Its status moves ``pending -> running -> stopping -> stopped`` or ends ``failed`` /
``culled``; :meth:`Session._enter` is the one place that sets it, after writing it to
the store, and every end is announced on the bus (:mod:`.bus`) once the worker is gone.
What a session needs of the hub comes in one :class:`.services.SessionServices`, never
the manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from phoebe_kernel_worker import protocol
from phoebe_kernel_worker.protocol import Message
from phoebe_kernel_worker.protocol.frames import Buffers

from ..auth.base import User
from ..channels import (
    ChannelBusy,
    ChannelClosed,
    ChannelError,
    ChannelTimeout,
    Reply,
    WorkerChannel,
)
from ..errors import CommandTimedOut, SessionGone, SessionNotFound, Unavailable
from ..spawners.base import Spawner
from ..store import DatabaseUnavailable
from .bus import CommandFinished, IopubMessage, SessionChanged
from .services import SessionServices

#: Statuses of a session that holds (or is about to hold, or still holds) a worker.
ACTIVE = ("pending", "running", "stopping")
#: Final statuses: the worker is gone for good.
ENDED = ("stopped", "culled", "failed")
#: who ended a session (``Session.ended_by``): its owner, the hub itself (cull, quota,
#: failure, shutdown), or ``"admin <name>"``
OWNER = "the user"
HUB = "the hub"
#: the reason of an owner's end (``POST /dash/end-session``), also in the store
OWNER_REASON = "ended by user"
#: longest error message kept per command (the command log's column holds 1000)
ERROR_CHARS = 1000


class Session:
    """One session as the hub sees it while it is alive (and a while after it failed)."""

    def __init__(
        self,
        id: str,
        user: User,
        meta: dict[str, Any],
        spawner: Spawner,
        services: SessionServices,
        *,
        created_at: float | None = None,
        last_activity: float | None = None,
        port: int | None = None,
        command_count: int = 0,
    ) -> None:
        self.id = id
        self.user = user
        self.meta = meta
        self.spawner = spawner
        self._services = services
        self.status = "pending"
        self.created_at = time.time() if created_at is None else created_at
        self.last_activity = self.created_at if last_activity is None else last_activity
        self.persisted_activity = 0.0
        self.port = port
        #: the worker's private memory (USS of its process tree) in MiB, and its PSS and
        #: RSS (see :meth:`take_memory`)
        self.mem_used = 0.0
        self.mem_pss = 0.0
        self.mem_rss = 0.0
        #: commands queued or running (``/send`` and jobs)
        self.in_flight = 0
        self.command_count = command_count
        self.reason: str | None = None
        self.channel: WorkerChannel | None = None
        #: one command at a time, in arrival order
        self.lock = asyncio.Lock()
        #: set once the start has ended, either way (a stop waits for it)
        self.launched = asyncio.Event()
        self.started_at: float | None = None
        self.ended_at: float | None = None
        #: re-adopted from a previous hub (its start was not this hub's)
        self.readopted = False
        #: whether the session stays listed after it ended (unless its owner ended it)
        self.linger = False
        #: who ended it (:data:`OWNER`, :data:`HUB` or ``"admin <name>"``), once it ends
        self.ended_by: str | None = None
        #: the checkpoint the hub saved before ending it (``CheckpointManager.before_stop``)
        self.checkpoint_id: str | None = None
        self.last_command: str | None = None
        self.last_command_ms: float | None = None
        #: "<command>: <message>" of the last command that did not succeed (admin page)
        self.last_error: str | None = None
        #: recent (unix time, MiB) memory samples, for the admin page's plots
        self.mem_history: deque[tuple[float, float]] = deque(maxlen=120)
        self._stopping: asyncio.Future[None] | None = None
        #: resolved once ``stopping`` is recorded and the worker told to stop
        self._told: asyncio.Future[None] | None = None
        #: the status a stop ends the session with (its 410 says it while it stops)
        self._final = "stopped"
        self._failing: asyncio.Future[Any] | None = None

    # --- views ------------------------------------------------------------------------

    @property
    def project_name(self) -> str | None:
        name = self.meta.get("project_name")
        return str(name) if name is not None else None

    @property
    def busy(self) -> bool:
        """Whether a command is queued, running or being interrupted."""
        return self.in_flight > 0 or self.lock.locked()

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
        """The admin view: the API object plus owner, age, idle time, last command, the
        worker's PSS and RSS beside ``mem_used`` (its USS) and the recent memory history
        (``[[unix time, USS MiB], ...]``)."""
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
            mem_pss=round(self.mem_pss, 3),
            mem_rss=round(self.mem_rss, 3),
            mem_history=[[round(t, 1), round(m, 2)] for t, m in self.mem_history],
        )
        return data

    def check_running(self) -> None:
        """Raise unless the session is running with a connected channel: 410 if the hub or
        an admin ended it (:meth:`gone`), 404 if its owner did (both already while its
        worker stops: the end-session has answered), 503 otherwise."""
        if self.status == "running" and self.channel is not None:
            return
        if self.status in (*ENDED, "stopping") and self.linger:
            raise self.gone()
        if self.status == "stopping" and self.ended_by == OWNER:
            raise SessionNotFound(f"Session {self.id} not found")
        if self.status == "failed":
            raise Unavailable(f"Session {self.id} has failed: {self.reason}")
        raise Unavailable(f"Session {self.id} is {self.status}")

    def gone(self) -> SessionGone:
        """The 410 a command to this ended (or stopping) session answers: why, and its
        checkpoint."""
        status = self._final if self.status == "stopping" else self.status
        return gone_error(self.id, status, self.reason, self.checkpoint_id)

    # --- the one status setter ------------------------------------------------------------

    async def _enter(
        self, status: str, reason: str | None = None, *, strict: bool = False, **fields: Any
    ) -> None:
        """Write ``status`` (and ``fields``) to the store, then take it on. ``strict``: a
        store that cannot take the write refuses the transition (503); otherwise it is
        logged and the session moves on (the transition already happened)."""
        try:
            await self._services.store.update_session(self.id, status=status, **fields)
        except (DatabaseUnavailable, KeyError) as e:
            if strict:
                raise Unavailable(f"Database unavailable: {e}") from None
            self._services.log.warning("could not record %s for session %s: %s", status, self.id, e)
        self.status = status
        if reason is not None:
            self.reason = reason

    def _announce(self, event: str) -> None:
        self._services.bus.publish(SessionChanged(event, self))

    # --- start ----------------------------------------------------------------------------

    def connect(self, channel: WorkerChannel) -> None:
        """Take the (connected) channel to the worker; its iopub messages go on the bus."""
        channel.add_iopub_handler(self._on_iopub)
        self.channel = channel

    def _on_iopub(self, message: Message) -> None:
        self._services.bus.publish(IopubMessage(self, message))

    async def started(self, port: int | None, status: Mapping[str, Any]) -> None:
        """The worker answers (``status``: its status reply): record the session running
        and announce ``started``."""
        self.port = port
        self.take_memory(status)
        now = time.time()
        await self._enter(
            "running",
            port=port,
            started_at=now,
            spawner_state=self.spawner.get_state(),
            last_activity=now,
        )
        self.last_activity = self.started_at = self.persisted_activity = now
        self._announce("started")

    async def readopt(self, started_at: float) -> None:
        """A worker of a previous hub answered: the session runs again (re-adoption)."""
        self.readopted = True
        await self._enter("running")
        self.started_at = started_at
        self._announce("started")

    # --- commands ----------------------------------------------------------------------------

    async def run(
        self,
        body: bytes,
        command: str,
        *,
        timeout: float | None,
        on_sent: Callable[[str], None] | None = None,
        activity: bool = True,
        count_wait: bool = True,
        buffers: Buffers | None = None,
    ) -> Reply:
        """Run one command after the commands before it (``/send``, jobs, checkpoints).

        ``timeout`` counts the wait for earlier commands unless ``count_wait`` is False
        (jobs: their limit counts from their start); ``None`` waits for ever. On a timeout
        the command is interrupted in the worker and :class:`CommandTimedOut` raised, its
        ``recovery`` the task that stops the worker if it ignores the interrupt.
        ``on_sent(msg_id)`` is called once the command is on its way to the worker.
        ``activity=False`` (the hub's own commands, e.g. checkpoints) leaves the idle time
        alone; ``buffers`` go beside the JSON. The hot path: no database wait, no copies.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self.in_flight += 1
        last_activity = self.last_activity
        started = time.time()
        release = True
        try:
            try:
                if self.lock.locked():  # wait_for wraps the acquire in a task: only if needed
                    await asyncio.wait_for(self.lock.acquire(), timeout if count_wait else None)
                else:
                    await self.lock.acquire()
            except TimeoutError:
                raise CommandTimedOut(
                    f"Command '{command}' waited {timeout:g} s for the session's previous command"
                ) from None
            try:
                self.check_running()
                assert self.channel is not None
                if not count_wait and timeout is not None:
                    deadline = time.monotonic() + timeout
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                cpu = self._services.cpu  # None unless cpu_isolation is on: checked first
                if cpu is not None and command not in self._services.background_commands:
                    cpu = None
                if cpu is not None:
                    cpu.background(self.id, True)  # one small cgroup write
                try:
                    reply = await self.channel.execute(
                        body, timeout=remaining, on_sent=on_sent, buffers=buffers
                    )
                finally:
                    if cpu is not None:
                        cpu.background(self.id, False)
            except ChannelTimeout as e:
                release = False  # the recovery task owns the lock until the worker is idle
                recovery = self._services.tasks.spawn(self._after_timeout(e.msg_id, command))
                self._log_command(command, started, False, "timeout")
                error = CommandTimedOut(
                    f"Command '{command}' exceeded its timeout of {timeout:g} s and was interrupted"
                )
                error.recovery = recovery
                raise error from None
            except (ChannelClosed, ChannelBusy) as e:
                raise Unavailable(self.reason or f"Worker unavailable: {e}") from None
            finally:
                if release:
                    self.lock.release()
        finally:
            self.in_flight -= 1
            self.last_activity = time.time() if activity else last_activity
        self.command_count += 1
        if reply.status == "ok":
            self._log_command(command, started, True, None)
        else:
            message = failure_message(reply)
            self._services.log.info(
                "session %s of %s: %s failed: %.300s",
                self.id,
                self.user.name,
                command[:64],
                message,
            )
            self._log_command(command, started, False, message)
        return reply

    def _log_command(self, command: str, started: float, success: bool, error: str | None) -> None:
        """Record a finished command: here, in the batched command log, on the bus, and in
        the hub log at debug level (``--debug``)."""
        seconds = time.time() - started
        self.last_command = command[:64]
        self.last_command_ms = 1000 * seconds
        self._services.log.debug(
            "session %s of %s: %s %s (%.1f ms)",
            self.id,
            self.user.name,
            self.last_command,
            "ok" if success else "failed",
            self.last_command_ms,
        )
        if error is not None:
            self.last_error = f"{self.last_command}: {error}"[:ERROR_CHARS]
        self._services.store.log_command(
            session_id=self.id,
            user_id=self.user.user_id,
            command=self.last_command,
            started_at=started,
            duration_ms=self.last_command_ms,
            success=success,
            error=error,
        )
        bus = self._services.bus
        if bus.has_subscribers(CommandFinished):
            bus.publish(CommandFinished(self, self.last_command, seconds, error))

    async def control_ping(self) -> Reply:
        """``ping`` while a command runs: the worker's status from the control channel."""
        assert self.channel is not None
        try:
            await self.channel.control(protocol.STATUS_REQUEST, timeout=5)
        except ChannelError as e:
            raise Unavailable(self.reason or f"Worker unavailable: {e}") from None
        return Reply({"status": "ok"}, b'{"success":true,"result":{"status":"ready"}}')

    async def sample(self) -> float:
        """The worker's private memory (USS of its process tree) in MiB, asked live (does
        not count as activity); its PSS and RSS are taken too."""
        if self.status == "running" and self.channel is not None:
            with contextlib.suppress(ChannelError):
                self.take_memory(await self.channel.control(protocol.STATUS_REQUEST, timeout=2))
        return self.mem_used

    def take_memory(self, status: Mapping[str, Any]) -> None:
        """Keep the memory of a worker's status reply: ``mem_used`` is its USS (private
        memory). A worker of an older release reports only RSS: then all three are it."""
        rss = float(status.get("rss_mib") or self.mem_rss)
        self.mem_rss = rss
        self.mem_pss = float(status.get("pss_mib") or rss)
        self.mem_used = float(status.get("uss_mib") or rss)

    async def persist_activity(self) -> None:
        """Write the last activity to the store if it moved (best effort)."""
        if self.last_activity > self.persisted_activity:
            try:
                await self._services.store.update_session(self.id, last_activity=self.last_activity)
                self.persisted_activity = self.last_activity
            except (DatabaseUnavailable, KeyError):
                pass

    # --- interrupting --------------------------------------------------------------------

    async def interrupt(self, msg_id: str, command: str, *, cause: str) -> str | None:
        """Interrupt the worker's command ``msg_id`` and wait up to ``interrupt_grace`` for
        the worker to leave it: None if it did, else why the worker counts as hung
        (``cause`` names what it ignored). Raises ChannelError if the worker is gone."""
        assert self.channel is not None
        grace = self._services.interrupt_grace
        try:
            await self.channel.control(protocol.INTERRUPT_REQUEST, {"msg_id": msg_id}, timeout=5)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                status = await self.channel.control(protocol.STATUS_REQUEST, timeout=2)
                if status.get("msg_id") != msg_id:
                    return None
                await asyncio.sleep(0.05)
        except ChannelTimeout:
            return f"worker hung: no answer on the control channel after {cause} of '{command}'"
        return f"worker hung: '{command}' ignored {cause} for {grace:g} s"

    async def interrupt_or_fail(self, msg_id: str, command: str, *, cause: str) -> bool:
        """:meth:`interrupt`, and fail the session if the worker is hung; whether the
        worker left the command (False also when it is gone)."""
        try:
            reason = await self.interrupt(msg_id, command, cause=cause)
        except ChannelError:
            return False  # the worker died or the session ended meanwhile
        if reason is None:
            self._services.log.info("session %s: %s interrupted", self.id, command)
            return True
        self._services.log.warning("session %s: %s; stopping it", self.id, reason)
        await self.fail(reason)
        return False

    async def _after_timeout(self, msg_id: str, command: str) -> None:
        """Interrupt a timed-out command, holding the lock (taken over from :meth:`run`)
        until the worker is idle or the session failed: no queued command reaches a hung
        worker."""
        try:
            await self.interrupt_or_fail(msg_id, command, cause="an interrupt")
        finally:
            self.lock.release()

    # --- endings ---------------------------------------------------------------------------

    async def stop(self, final: str, reason: str, *, by: str = HUB, wait: bool = True) -> None:
        """Stop the worker and end ``final`` (``stopped``, ``culled``) once; concurrent
        callers share the one stop. ``by``: who ends it (the session lingers unless
        :data:`OWNER`). The stop runs in a tracked task (hub shutdown waits for it); with
        ``wait=False`` (end-session) this returns once ``stopping`` is recorded and the
        worker told to stop, and the session holds its slot until the worker is gone.
        503 if the store cannot record ``stopping``."""
        if self.status == "pending":
            await self.launched.wait()  # stop what the start created, never race it
        if self._stopping is None:
            if self.status not in ACTIVE:
                return
            self.ended_by = by
            self.linger = by != OWNER
            self._final = final
            self._told = asyncio.get_running_loop().create_future()
            # retrieved here: a waiter cancelled meanwhile leaves no "never retrieved" warning
            self._told.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._stopping = self._services.tasks.spawn(self._stop(final, reason, self._told))
            self._stopping.add_done_callback(self._log_crash)
        told, stopping = self._told, self._stopping
        assert told is not None  # set with _stopping
        await asyncio.shield(told)
        if wait:
            await asyncio.shield(stopping)

    async def _stop(self, final: str, reason: str, told: asyncio.Future[None]) -> None:
        """The stop: ``told`` resolves once ``stopping`` is recorded and the shutdown
        request sent (or fails with the 503); the worker's exit, the final status and the
        slot's release follow."""
        try:
            await self._enter("stopping", reason, strict=True)
        except Unavailable as e:
            self._stopping = None  # nothing happened: a later stop may try again
            told.set_exception(e)
            return
        self._announce("stopping")
        if self.channel is not None:
            # the request leaves in control()'s first step, before its first wait: the
            # waiters of ``told`` run only after that
            asked = self.channel.control(protocol.SHUTDOWN_REQUEST, timeout=1)
            told.set_result(None)
            with contextlib.suppress(ChannelError):  # a dead worker cannot answer
                await asked
            await self.channel.close(ChannelClosed(f"session {final}: {reason}"))
        else:
            told.set_result(None)
        log = self._services.log
        try:
            await self.spawner.stop()
        except Exception:
            log.exception("stopping the worker of session %s failed", self.id)
            try:
                await self.spawner.stop(now=True)
            except Exception as e:
                # e.g. the docker engine is unreachable: never leave the session stuck in
                # "stopping"; it ends failed, and its spawner state stays in the database
                # for the operator (the log says which worker may still be running)
                log.exception("killing the worker of session %s failed too", self.id)
                self.ended_at = time.time()
                why = f"could not stop the worker: {e}"
                await self._enter("failed", why, stopped_at=self.ended_at, termination_reason=why)
                self._announce("failed")
                return
        self.spawner.clear_state()
        self.ended_at = time.time()
        await self._enter(
            final, reason, stopped_at=self.ended_at, termination_reason=reason, spawner_state={}
        )
        self._announce(final)

    def _log_crash(self, task: asyncio.Task[None]) -> None:
        """Log a stop that raised (nobody awaits an end-session's stop to the end)."""
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self._services.log.error("stopping session %s failed", self.id, exc_info=error)
            if self._told is not None and not self._told.done():
                self._told.set_exception(error)  # its waiters get the error, never hang

    async def fail(self, reason: str) -> None:
        """End the session ``failed`` with ``reason`` (it stays listed a while) and kill
        its worker; once, and carried through even if the caller is cancelled."""
        if self._failing is None:
            if self.status in ENDED:
                return
            self._failing = self._services.tasks.spawn(self._fail(reason))
        await asyncio.shield(self._failing)

    async def _fail(self, reason: str) -> None:
        self.linger = True
        self.ended_by = HUB
        self.ended_at = time.time()
        await self._enter("failed", reason, termination_reason=reason, stopped_at=self.ended_at)
        if self.channel is not None:
            await self.channel.close(ChannelClosed(reason))
        try:
            await self.spawner.stop(now=True)
        except Exception:
            self._services.log.exception("cleaning up the worker of failed session %s", self.id)
        self.spawner.clear_state()
        with contextlib.suppress(DatabaseUnavailable, KeyError):
            await self._services.store.update_session(self.id, spawner_state={})
        self._announce("failed")


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


def gone_error(
    session_id: str, status: str, reason: str | None, checkpoint_id: str | None
) -> SessionGone:
    """The 410 for a session that ended ``status`` for ``reason`` (live or stored)."""
    if status == "failed":
        detail = f"Session {session_id} has failed: {reason}"
    else:
        detail = f"Session {session_id} was {status}: {reason}"
    if checkpoint_id:
        detail += f"; checkpoint {checkpoint_id} was saved at its end (start from it)"
    return SessionGone(detail, reason, checkpoint_id)


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


def session_dir(data_dir: str, user_id: str, session_id: str) -> str:
    """Where a session's storage lives under the hub's data directory."""
    return str(Path(data_dir) / "sessions" / user_dir_name(user_id) / session_id)
