"""The warm pool: ready, unassigned workers a session start takes at once (any backend).

Owned by the :class:`~phoebe_spawner.sessions.manager.SessionManager` (``warm_pool_size``,
0 = off), which hands it what it needs (a spawner factory, the zmq context, how many
sessions the hub still has room for) and subscribes :meth:`WarmPool.fill` to the bus.
Each pool worker is started through the configured spawner *before* anyone owns it,
with a fresh session id and the key derived from that id, in an empty directory of its
own, and is checked with a signed status request. When a user starts a session,
the manager takes a ready worker (:meth:`WarmPool.take`, no await), the session gets the
worker's id, and :meth:`WarmPool.hand_out` sends one ``bind_request`` that moves the
worker into the user's session directory; a replacement starts in the background.

A pool worker is handed out once and then belongs to that session until it stops; it
never returns to the pool, so nothing of one user can reach another. Pool workers count
toward the hub's capacity (a starting one gives way to a user's start when the hub is
full), are always stopped at shutdown and are never re-adopted: they are not sessions
in the database, and a small state file per worker lets the next hub stop any that a
crashed hub left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import zmq.asyncio

from phoebe_kernel_worker import protocol

from ..auth.base import User
from ..channels import ChannelError, WorkerChannel, WorkerEndpoint
from ..spawners.base import Spawner
from .session import Session

#: the owner a pool worker's spawner has until it is handed out
POOL_USER = User(user_id="", name="(warm pool)")
#: seconds before the pool retries after a worker failed to start
RETRY_DELAY = 5.0
#: the pool workers' directories (and state files) under the hub's data directory
POOL_DIR = "pool"


@dataclass(eq=False)
class PooledWorker:
    """One ready pool worker: its spawner, endpoint and its (pool-side) channel."""

    session_id: str
    spawner: Spawner
    endpoint: WorkerEndpoint
    channel: WorkerChannel
    ready_at: float = field(default_factory=time.monotonic)


class WarmPool:
    """Keeps ``size`` ready workers for the manager; see the module docstring.

    ``make_spawner(session_id, user)`` builds a spawner as for a session;
    ``slots_left()`` is how many more workers the hub has room for (None: no limit).
    """

    def __init__(
        self,
        size: int,
        data_dir: str,
        *,
        make_spawner: Callable[[str, User], Spawner],
        slots_left: Callable[[], int | None],
        zmq_ctx: zmq.asyncio.Context,
        log: Any,
    ) -> None:
        self.size = size
        self._make_spawner = make_spawner
        self._slots_left = slots_left
        self._zmq_ctx = zmq_ctx
        self.log = log
        self.ready: deque[PooledWorker] = deque()
        self.starting = 0
        self.handed_out = 0
        self._give_way = 0  # starting workers that must stop as soon as they are up
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._retry_at = 0.0
        self.dir = Path(data_dir) / POOL_DIR

    # --- accounting ------------------------------------------------------------------

    def count(self) -> int:
        """Workers the pool holds or is starting (they count toward capacity)."""
        return len(self.ready) + self.starting - self._give_way

    def take(self) -> PooledWorker | None:
        """A ready worker for a session start, or None (synchronous: no await)."""
        worker = self.ready.popleft() if self.ready else None
        if worker is not None:
            self.handed_out += 1
        asyncio.get_running_loop().call_soon(self.fill)
        return worker

    def give_way(self) -> bool:
        """Free one capacity slot held by a starting pool worker for a user's start."""
        if self.starting - self._give_way > 0:
            self._give_way += 1
            return True
        return False

    def fill(self) -> None:
        """Start workers until the pool is full or the hub's capacity is reached."""
        if self._closing or self.size <= 0 or time.monotonic() < self._retry_at:
            return
        left = self._slots_left()
        while self.count() < self.size:
            if left is not None and self.count() >= left:
                return
            self.starting += 1
            self._spawn(self._start_one())

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name="warm-pool")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- one worker ---------------------------------------------------------------------

    def _state_file(self, session_id: str) -> Path:
        return self.dir / f"{session_id}.json"

    async def _start_one(self) -> None:
        session_id = str(uuid.uuid4())
        spawner = self._make_spawner(session_id, POOL_USER)
        spawner.session_dir = str(self.dir / session_id)
        spawner.pooled = True
        channel: WorkerChannel | None = None
        worker: PooledWorker | None = None
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            endpoint = await spawner.start()
            self._state_file(session_id).write_bytes(orjson.dumps(spawner.get_state()))
            channel = WorkerChannel(self._zmq_ctx, session_id, spawner.key.encode(), endpoint)
            channel.connect()
            await channel.control(protocol.STATUS_REQUEST, timeout=spawner.start_timeout)
            worker = PooledWorker(session_id, spawner, endpoint, channel)
        except Exception as e:
            self.log.warning("a warm-pool worker failed to start: %s", e)
            self._retry_at = time.monotonic() + RETRY_DELAY
        finally:
            self.starting -= 1
        gave_way = self._give_way > 0
        if gave_way:
            self._give_way -= 1
        if worker is None or self._closing or gave_way:
            if channel is not None:
                await channel.close()
            await self._stop_spawner(session_id, spawner)
            if worker is None and not self._closing:
                asyncio.get_running_loop().call_later(RETRY_DELAY, self.fill)
            return
        self.ready.append(worker)
        self.fill()

    async def _stop_spawner(self, session_id: str, spawner: Spawner) -> None:
        try:
            await spawner.stop(now=True)
        except Exception:
            self.log.exception("stopping warm-pool worker %s failed", session_id)
        spawner.clear_state()
        self._forget(session_id)

    def _forget(self, session_id: str) -> None:
        self._state_file(session_id).unlink(missing_ok=True)
        shutil.rmtree(self.dir / session_id, ignore_errors=True)

    async def hand_out(self, worker: PooledWorker, s: Session, session_dir: str) -> WorkerEndpoint:
        """Bind ``worker`` to session ``s`` (which has its id and spawner), moving it into
        ``session_dir``; its endpoint.

        Raises :class:`~phoebe_spawner.channels.ChannelError` if the worker does not take
        the binding (it died in the pool); the worker is stopped then.
        """
        spawner = worker.spawner
        moved = _move_into_place(Path(spawner.session_dir), Path(session_dir))
        try:
            reply = await worker.channel.control(
                protocol.BIND_REQUEST, {"session_dir": session_dir, "moved": moved}, timeout=5
            )
            if not reply.get("bound"):
                raise ChannelError(str(reply.get("error") or "the worker refused the binding"))
        except ChannelError:
            await worker.channel.close()
            await self._stop_spawner(worker.session_id, spawner)
            raise
        await worker.channel.close()
        spawner.bind(s.user.to_dict(), session_dir)
        self._forget(worker.session_id)
        return worker.endpoint

    def discard(self, worker: PooledWorker) -> None:
        """Stop a taken worker that will not be used (its session could not be recorded)."""
        self._spawn(self._discard(worker))

    async def _discard(self, worker: PooledWorker) -> None:
        await worker.channel.close()
        await self._stop_spawner(worker.session_id, worker.spawner)

    # --- hub start and shutdown ---------------------------------------------------------

    async def reap_leftovers(self) -> None:
        """Stop the pool workers a previous hub left behind (it crashed); at start-up."""
        if not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob("*.json")):
            session_id = path.stem
            try:
                state: dict[str, Any] = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                state = {}
            spawner = self._make_spawner(session_id, POOL_USER)
            spawner.load_state(state)
            self.log.info("stopping warm-pool worker %s left by a previous hub", session_id)
            await self._stop_spawner(session_id, spawner)

    async def stop(self) -> None:
        """Stop every pool worker, ready or starting (always, whatever the shutdown mode)."""
        self._closing = True
        await asyncio.gather(*self._tasks, return_exceptions=True)
        ready, self.ready = list(self.ready), deque()
        for worker in ready:
            with contextlib.suppress(ChannelError):
                await worker.channel.control(protocol.SHUTDOWN_REQUEST, timeout=1)
            await worker.channel.close()
        await asyncio.gather(
            *(self._stop_spawner(w.session_id, w.spawner) for w in ready), return_exceptions=True
        )


def _move_into_place(pool_dir: Path, session_dir: Path) -> bool:
    """Rename a pool worker's directory to its session's (by :meth:`WarmPool.hand_out`);
    whether it was moved (the bind request tells the worker so).

    A walled worker can neither reach nor create the new path (its Landlock rules, its
    uid and its mount namespace cover the directory it started in, which a rename
    keeps): it finds itself there already. Left alone when the session directory exists
    (the worker then makes and enters it itself).
    """
    if session_dir.exists() or not pool_dir.is_dir():
        return False
    try:
        session_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.rename(pool_dir, session_dir)
    except OSError:
        return False
    return True
