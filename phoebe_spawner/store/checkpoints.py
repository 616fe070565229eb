"""Queries on bundle checkpoints (the ``checkpoints`` table): :class:`CheckpointQueries`.

The :class:`~phoebe_spawner.store.Store` owns one :class:`CheckpointQueries` and
exposes its methods as ``create_checkpoint``, ``get_checkpoint`` & co; the hub's
checkpoint code calls the store, never this module.  A
*checkpoint* is a saved copy of a session's PHOEBE bundle: the hub writes the
bundle's JSON to a file under its data directory and records the file's metadata
(path relative to the data directory, size, SHA-256, why and when it was taken) in
the ``checkpoints`` table.  The database never holds the bundle itself.

A checkpoint row is independent of its session's row (``session_id`` is not a
foreign key), so checkpoints survive the session and its deletion.  Keeping the
files and the rows consistent is the hub's job: write the file before
:meth:`CheckpointQueries.create`, and delete the row with
:meth:`CheckpointQueries.delete` before (or together with) the file.

Like the rest of the store, every query runs on the store's single DB thread and
driver outages surface as :class:`~phoebe_spawner.store.DatabaseUnavailable`.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session as OrmSession

from . import orm
from .engine import DatabaseThread

__all__ = ["CheckpointQueries"]

_CKPT = orm.Base.metadata.tables["checkpoints"]
#: Newest first, with ``id`` as a tie-breaker so that pages never overlap.
_NEWEST_FIRST = (_CKPT.c.created_at.desc(), _CKPT.c.id.desc())
_OLDEST_FIRST = (_CKPT.c.created_at, _CKPT.c.id)
#: Free-text labels: over-long values are cut to the column length.
_TRUNCATE = ("name", "project_name")
#: Identifiers and file facts: a cut value would point elsewhere, so too long is an error.
_EXACT = ("id", "user_id", "session_id", "path", "sha256")


def _length(column: str) -> int:
    length = getattr(_CKPT.c[column].type, "length", None)
    assert isinstance(length, int)
    return length


_LENGTHS = {name: _length(name) for name in (*_TRUNCATE, *_EXACT)}


def _checkpoint_row(values: dict[str, Any]) -> dict[str, Any]:
    """Validate ``create_checkpoint`` arguments and return the row to insert.

    ``reason`` must be one of :data:`~phoebe_spawner.store.orm.CHECKPOINT_REASONS`;
    ``id``/``user_id``/``path``/``sha256`` must be non-empty and, like
    ``session_id``, fit their columns; ``size`` must be an int >= 0.  ``name`` and
    ``project_name`` are cut to 255 chars.  Raises ``ValueError`` otherwise.
    """
    if values["reason"] not in orm.CHECKPOINT_REASONS:
        raise ValueError(
            f"invalid checkpoint reason {values['reason']!r}; "
            f"expected one of {orm.CHECKPOINT_REASONS}"
        )
    for key in _EXACT:
        value = values[key]
        if value is None and key == "session_id":
            continue
        if not isinstance(value, str) or not value:
            raise ValueError(f"checkpoint {key} must be a non-empty string")
        if len(value) > _LENGTHS[key]:
            raise ValueError(f"checkpoint {key} is longer than {_LENGTHS[key]} characters")
    size = values["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"checkpoint size must be an int >= 0, not {size!r}")
    row = dict(values)
    for key in _TRUNCATE:
        value = row[key]
        if isinstance(value, str) and len(value) > _LENGTHS[key]:
            row[key] = value[: _LENGTHS[key]]
    return {c.name: row[c.name] for c in _CKPT.c}


class CheckpointQueries:
    """Record, read, list, delete and count checkpoint rows; queries run on ``db``'s thread.

    Rows come back as plain
    dicts with every column of ``checkpoints``: ``id``, ``user_id``,
    ``session_id``, ``created_at``, ``reason``, ``name``, ``project_name``,
    ``path``, ``size``, ``sha256``.
    """

    def __init__(self, db: DatabaseThread) -> None:
        self._db = db

    async def create(
        self,
        *,
        id: str,
        user_id: str,
        session_id: str | None,
        created_at: float,
        reason: str,
        path: str,
        size: int,
        sha256: str,
        name: str | None = None,
        project_name: str | None = None,
    ) -> dict[str, Any]:
        """Record a checkpoint whose bundle file the hub has just written; returns the row.

        ``path`` is the file's path relative to the hub's data directory, ``size``
        its length in bytes and ``sha256`` its hex digest.  ``session_id`` may name
        a session that no longer exists (or be ``None``): it is not checked.
        ``name``/``project_name`` are cut to 255 chars.  Raises ``ValueError`` for
        a duplicate id, an unknown ``reason`` (see
        :data:`~phoebe_spawner.store.orm.CHECKPOINT_REASONS`), an empty or over-long
        id/user_id/session_id/path/sha256 or a negative ``size``.
        """
        row = _checkpoint_row(
            {
                "id": id,
                "user_id": user_id,
                "session_id": session_id,
                "created_at": created_at,
                "reason": reason,
                "name": name,
                "project_name": project_name,
                "path": path,
                "size": size,
                "sha256": sha256,
            }
        )

        def work(s: OrmSession) -> None:
            with s.begin():
                s.connection().execute(sa.insert(_CKPT), row)

        try:
            await self._db.run(work)
        except sa_exc.IntegrityError as exc:
            raise ValueError(f"cannot create checkpoint {id!r}: {exc.orig}") from exc
        return row

    async def get(self, checkpoint_id: str) -> dict[str, Any] | None:
        """Checkpoint ``checkpoint_id`` as a dict, or ``None`` (download/restore/delete).

        Not scoped to a user: the caller must check ``row["user_id"]`` itself.
        """
        query = sa.select(_CKPT).where(_CKPT.c.id == checkpoint_id)

        def work(s: OrmSession) -> dict[str, Any] | None:
            found = s.connection().execute(query).mappings().first()
            return None if found is None else dict(found)

        return await self._db.run(work)

    async def page(
        self,
        *,
        user_id: str,
        session_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of a user's checkpoints, newest (``created_at``) first, and the total.

        Returns ``(rows, total)``; ``total`` counts every checkpoint matching the
        filters, ignoring ``limit``/``offset`` (for pagination).  Only ``user_id``'s
        checkpoints are ever listed; ``session_id`` narrows them to one session's.
        Raises ``ValueError`` for a negative ``limit`` or ``offset``.
        """
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must be >= 0")
        where: list[sa.ColumnElement[bool]] = [_CKPT.c.user_id == user_id]
        if session_id is not None:
            where.append(_CKPT.c.session_id == session_id)
        query = sa.select(_CKPT).where(*where).order_by(*_NEWEST_FIRST).limit(limit).offset(offset)
        count = sa.select(sa.func.count()).select_from(_CKPT).where(*where)

        def work(s: OrmSession) -> tuple[list[dict[str, Any]], int]:
            conn = s.connection()
            total = conn.execute(count).scalar_one()
            return [dict(m) for m in conn.execute(query).mappings()], total

        return await self._db.run(work)

    async def delete(self, checkpoint_id: str) -> bool:
        """Delete the row of checkpoint ``checkpoint_id``; True if there was one.

        Only the row: removing the bundle file is the caller's job.
        """
        stmt = sa.delete(_CKPT).where(_CKPT.c.id == checkpoint_id)

        def work(s: OrmSession) -> bool:
            with s.begin():
                return s.connection().execute(stmt).rowcount > 0

        return await self._db.run(work)

    async def usage(self, user_id: str) -> tuple[int, int]:
        """``(count, total size in bytes)`` of a user's checkpoints (quota checks).

        ``(0, 0)`` for a user without checkpoints.
        """
        query = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(_CKPT.c.size), 0)).where(
            _CKPT.c.user_id == user_id
        )

        def work(s: OrmSession) -> tuple[int, int]:
            count, total = s.connection().execute(query).one()
            return int(count), int(total)  # SUM is NUMERIC on PostgreSQL

        return await self._db.run(work)

    async def oldest(self, user_id: str, *, limit: int) -> list[dict[str, Any]]:
        """A user's ``limit`` oldest checkpoints, oldest first (retention pruning).

        The hub deletes these (rows and files) until the user is back within the
        retention limits.  Raises ``ValueError`` for a negative ``limit``.
        """
        if limit < 0:
            raise ValueError("limit must be >= 0")
        query = (
            sa.select(_CKPT).where(_CKPT.c.user_id == user_id).order_by(*_OLDEST_FIRST).limit(limit)
        )
        return await self._db.run(
            lambda s: [dict(m) for m in s.connection().execute(query).mappings()]
        )
