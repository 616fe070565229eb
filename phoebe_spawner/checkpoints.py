"""Checkpoints: a session's PHOEBE bundle saved by the hub, so no cull or stop loses a model.

The :class:`CheckpointManager` (built by the app) asks the worker for its bundle
through the session's own command queue (``get_bundle``), writes it under
``<data_dir>/checkpoints/<user>/<id>.json`` (temporary file, fsync, rename) with its
SHA-256 fingerprint, and records it in the database. The session manager calls it
before culling an idle session (a failed checkpoint aborts the cull) and before
stopping workers at shutdown; users call it on demand and start new sessions from
any of their checkpoints. Per-user retention (count and total size) drops the oldest
first. File work runs off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from traitlets import Any as AnyTrait
from traitlets import Float, Integer, Unicode
from traitlets.config import LoggingConfigurable

from .auth.base import User
from .errors import SessionError, SessionNotFound
from .sessions.session import Session, user_dir_name
from .spawners.base import ByteSpecification
from .store import Store

REASONS = ("manual", "cull", "shutdown", "stop")


class CheckpointTooLarge(SessionError):
    status = 413


class CheckpointQuota(SessionError):
    """The checkpoint cannot fit in the user's quota even after dropping old ones."""

    status = 507


class CheckpointFailed(SessionError):
    """The worker could not hand over its bundle, or a stored file is damaged."""

    status = 503


def checkpoint_to_api(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    base = f"{prefix}/api/v1/checkpoints/{row['id']}"
    return {
        "checkpoint_id": row["id"],
        "session_id": row.get("session_id"),
        "created_at": row["created_at"],
        "reason": row["reason"],
        "name": row.get("name"),
        "project_name": row.get("project_name"),
        "size": row["size"],
        "sha256": row["sha256"],
        "links": {"self": base, "bundle": f"{base}/bundle"},
    }


class CheckpointManager(LoggingConfigurable):
    """Saves, lists, restores and prunes checkpoints. Called by handlers and the session manager."""

    max_per_user = Integer(
        20, help="Checkpoints kept per user; the oldest are dropped beyond this."
    ).tag(config=True)
    max_bytes_per_user = ByteSpecification(
        2 * 1024**3, help="Total size of one user's checkpoints; the oldest are dropped beyond it."
    ).tag(config=True)
    max_checkpoint_bytes = ByteSpecification(
        512 * 1024**2, help="Largest single checkpoint (413 beyond)."
    ).tag(config=True)
    timeout = Float(
        600.0, help="Seconds a checkpoint may wait for the session's queue and the worker."
    ).tag(config=True)
    shutdown_timeout = Float(
        30.0, help="The same at hub shutdown, so a hung worker cannot hold the shutdown up."
    ).tag(config=True)

    data_dir = Unicode(help="The hub's data directory (set by the app).")
    url_prefix = Unicode("", help="The hub's base URL without its trailing slash (set by the app).")
    store = AnyTrait(help="The Store (set by the app).")
    manager = AnyTrait(help="The SessionManager (set by the app).")
    user_events = AnyTrait(None, allow_none=True, help="The UserEvents bus (set by the app).")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._locks: dict[str, asyncio.Lock] = {}

    # --- saving -------------------------------------------------------------------------

    async def save(self, s: Session, reason: str, name: str | None = None) -> dict[str, Any]:
        """Checkpoint ``s`` now (waits for its running command); returns the stored row."""
        if reason not in REASONS:
            raise ValueError(f"unknown checkpoint reason {reason!r}")
        reply = await s.run(
            b'{"command": "get_bundle"}',
            "get_bundle",
            timeout=self.shutdown_timeout if reason == "shutdown" else self.timeout,
            activity=False,
        )
        try:
            answer = orjson.loads(reply.content)
            bundle = answer["result"]["bundle"] if answer.get("success") else None
        except (orjson.JSONDecodeError, KeyError, TypeError):
            bundle = None
        if not isinstance(bundle, str):
            error = answer.get("error") if isinstance(answer, dict) else None
            raise CheckpointFailed(f"The worker could not save its bundle: {error or 'no bundle'}")
        data = bundle.encode()
        if len(data) > self._max_one:
            raise CheckpointTooLarge(
                f"The bundle is {len(data)} bytes; a checkpoint may have {self._max_one}"
            )
        async with self._user_lock(s.user.user_id):  # quota check and insert as one step
            row = await self._store_checkpoint(s, reason, name, data)
        self.log.info(
            "checkpoint %s of session %s (%s, %d bytes)", row["id"], s.id, reason, len(data)
        )
        if self.user_events is not None:
            self.user_events.publish(
                s.user.user_id,
                "checkpoint_saved",
                {"checkpoint_id": row["id"], "session_id": s.id, "reason": reason},
            )
        return row

    @property
    def _max_total(self) -> int:
        return int(self.max_bytes_per_user or 0)

    @property
    def _max_one(self) -> int:
        return int(self.max_checkpoint_bytes or 0)

    def _user_lock(self, user_id: str) -> asyncio.Lock:
        lock = self._locks.get(user_id)
        if lock is None:
            lock = self._locks[user_id] = asyncio.Lock()
        return lock

    async def _store_checkpoint(
        self, s: Session, reason: str, name: str | None, data: bytes
    ) -> dict[str, Any]:
        store: Store = self.store
        await self._make_room(s.user.user_id, len(data))
        checkpoint_id = str(uuid.uuid4())
        relpath = Path("checkpoints") / user_dir_name(s.user.user_id) / f"{checkpoint_id}.json"
        sha256 = await asyncio.get_running_loop().run_in_executor(
            None, _write_atomically, Path(self.data_dir) / relpath, data
        )
        try:
            row: dict[str, Any] = await store.create_checkpoint(
                id=checkpoint_id,
                user_id=s.user.user_id,
                session_id=s.id,
                created_at=time.time(),
                reason=reason,
                path=str(relpath),
                size=len(data),
                sha256=sha256,
                name=name,
                project_name=s.project_name,
            )
        except BaseException:
            await self._remove_file(str(relpath))
            raise
        return row

    async def _make_room(self, user_id: str, size: int) -> None:
        """Drop the user's oldest checkpoints until one of ``size`` bytes fits the quota."""
        if size > self._max_total:
            raise CheckpointQuota(
                f"The bundle ({size} bytes) is larger than the checkpoint quota "
                f"({self._max_total} bytes)"
            )
        store: Store = self.store
        count, total = await store.checkpoint_usage(user_id)
        excess_count = count + 1 - self.max_per_user
        if excess_count <= 0 and total + size <= self._max_total:
            return
        for row in await store.oldest_checkpoints(user_id, limit=count):
            if excess_count <= 0 and total + size <= self._max_total:
                break
            await self._drop(row)
            excess_count -= 1
            total -= row["size"]

    async def _drop(self, row: dict[str, Any]) -> None:
        store: Store = self.store
        await store.delete_checkpoint(row["id"])
        await self._remove_file(row["path"])
        self.log.info("dropped checkpoint %s of %s (retention)", row["id"], row["user_id"])

    async def _remove_file(self, relpath: str) -> None:
        path = self._path(relpath)
        await asyncio.get_running_loop().run_in_executor(None, lambda: path.unlink(missing_ok=True))

    def _path(self, relpath: str) -> Path:
        path = (Path(self.data_dir) / relpath).resolve()
        if not path.is_relative_to(Path(self.data_dir).resolve()):
            raise CheckpointFailed("checkpoint path outside the data directory")
        return path

    # --- reading ----------------------------------------------------------------------

    async def get(self, user: User, checkpoint_id: str) -> dict[str, Any]:
        """The checkpoint's row if ``user`` owns it; 404 otherwise."""
        store: Store = self.store
        row = await store.get_checkpoint(checkpoint_id)
        if row is None or row["user_id"] != user.user_id:
            raise SessionNotFound(f"Checkpoint {checkpoint_id} not found")
        return row

    async def list(
        self, user: User, *, session_id: str | None, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        store: Store = self.store
        rows, total = await store.list_checkpoints(
            user_id=user.user_id, session_id=session_id, limit=limit, offset=offset
        )
        return rows, total

    async def read(self, row: dict[str, Any]) -> bytes:
        """The bundle file, checked against its fingerprint."""
        path = self._path(row["path"])

        def read() -> bytes | None:
            try:
                return path.read_bytes()
            except FileNotFoundError:
                return None

        data = await asyncio.get_running_loop().run_in_executor(None, read)
        if data is None:
            raise CheckpointFailed(f"Checkpoint {row['id']} has no file")
        if hashlib.sha256(data).hexdigest() != row["sha256"]:
            raise CheckpointFailed(f"Checkpoint {row['id']} is damaged (fingerprint mismatch)")
        return data

    async def delete(self, user: User, checkpoint_id: str) -> None:
        await self._drop(await self.get(user, checkpoint_id))

    # --- restoring -----------------------------------------------------------------------

    async def restore(self, s: Session, row: dict[str, Any]) -> None:
        """Load a checkpoint's bundle into ``s`` (``load_bundle`` through its queue)."""
        data = await self.read(row)
        body = b'{"command":"load_bundle","bundle":' + orjson.dumps(data.decode()) + b"}"
        reply = await s.run(body, "load_bundle", timeout=self.timeout)
        answer = orjson.loads(reply.content)
        if not answer.get("success"):
            raise CheckpointFailed(
                f"The worker could not load the checkpoint: {answer.get('error')}"
            )

    async def before_stop(self, s: Session, reason: str) -> None:
        """The session manager's hook before a hub-initiated stop (cull, shutdown, quota,
        a disabled account): the session learns its checkpoint's id, which its 410 names."""
        if s.status == "running":
            row = await self.save(s, reason)
            s.checkpoint_id = row["id"]

    async def start_session(self, user: User, meta: dict[str, Any], **kwargs: Any) -> Session:
        """Start a session from the checkpoint named in ``meta["checkpoint_id"]``.

        The checkpoint is checked (owner, file, fingerprint) before any worker starts;
        if loading it fails, the new session is ended again and the error raised.
        """
        row = await self.get(user, str(meta["checkpoint_id"]))
        await self.read(row)  # fail fast on a missing or damaged file
        if row.get("project_name") and "project_name" not in meta:
            meta = {**meta, "project_name": row["project_name"]}
        s: Session = await self.manager.start_session(user, meta, **kwargs)
        try:
            await self.restore(s, row)
        except BaseException:
            await self.manager.end_session(user, s.id)
            raise
        return s


def _write_atomically(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` via a temporary file and rename; returns its SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()
