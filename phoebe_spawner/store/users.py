"""Queries on hub accounts (the ``users`` table): :class:`UserQueries`.

The :class:`~phoebe_spawner.store.Store` owns one :class:`UserQueries` and exposes
its methods under their historical names (``create_user``, ``ensure_user``, ...);
the authenticators, :mod:`phoebe_spawner.accounts` and the admin handlers call the
store, never this module.  Rows come back as plain dicts of the
:class:`~phoebe_spawner.store.orm.User` columns.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session as OrmSession

from . import orm
from .engine import DatabaseThread

__all__ = ["UserQueries"]


class UserQueries:
    """Create, find and update hub accounts; every query runs on ``db``'s thread."""

    def __init__(self, db: DatabaseThread) -> None:
        self._db = db

    async def create(
        self,
        *,
        name: str,
        email: str | None,
        password_hash: str | None,
        first_name: str = "",
        last_name: str = "",
        role: str = "user",
        admin: bool = False,
    ) -> dict[str, Any] | None:
        """Insert a user (jwt-mode sign-up/admin); ``None`` if ``name`` is taken."""
        if not name:
            raise ValueError("user name must not be empty")
        user = orm.User(
            name=name,
            email=email,
            password_hash=password_hash,
            first_name=orm.truncate(first_name, 255),
            last_name=orm.truncate(last_name, 255),
            role=role,
            admin=admin,
            created_at=time.time(),
        )

        def work(s: OrmSession) -> dict[str, Any]:
            with s.begin():
                s.add(user)
            return orm.as_dict(user)

        try:
            return await self._db.run(work)
        except sa_exc.IntegrityError:
            return None

    async def by_name(self, name: str) -> dict[str, Any] | None:
        """The user called ``name``, or ``None`` (authenticators, admin API)."""
        return await self._db.get(orm.User, orm.User.name == name)

    async def by_id(self, user_id: int) -> dict[str, Any] | None:
        """The user with primary key ``user_id``, or ``None``."""
        return await self._db.get(orm.User, orm.User.id == user_id)

    async def ensure(
        self,
        *,
        name: str,
        email: str | None = None,
        full_name: str = "",
        role: str = "user",
        admin: bool = False,
    ) -> dict[str, Any]:
        """Create or update the user ``name`` on login (external/hub/none auth modes).

        The identity provider is authoritative: ``role`` and ``admin`` are always
        written, ``email`` and ``full_name`` (split into first/last name at the first
        space) only when given; ``last_seen`` is set to now.  ``is_active`` is left
        alone, so the caller must still refuse a deactivated user.
        """
        if not name:
            raise ValueError("user name must not be empty")
        first, _, last = full_name.strip().partition(" ")

        def work(s: OrmSession) -> dict[str, Any]:
            for attempt in range(2):
                now = time.time()
                try:
                    with s.begin():
                        query = sa.select(orm.User).where(orm.User.name == name)
                        user = s.scalars(query).one_or_none()
                        if user is None:
                            user = orm.User(name=name, created_at=now)
                            s.add(user)
                        if email is not None:
                            user.email = email
                        if full_name.strip():
                            user.first_name = orm.truncate(first, 255) or ""
                            user.last_name = orm.truncate(last.strip(), 255) or ""
                        user.role, user.admin, user.last_seen = role, admin, now
                    return orm.as_dict(user)
                except sa_exc.IntegrityError:
                    if attempt:  # a concurrent insert of the same name: retry once
                        raise
            raise AssertionError("unreachable")

        return await self._db.run(work)

    async def update(self, name: str, **values: Any) -> bool:
        """Set columns of the user ``name`` (activation, password); False if there is none."""

        def work(s: OrmSession) -> bool:
            with s.begin():
                stmt = sa.update(orm.User).where(orm.User.name == name).values(**values)
                result: sa.CursorResult[Any] = s.execute(stmt)  # type: ignore[assignment]
                return result.rowcount > 0

        return await self._db.run(work)
