"""Disabling and re-enabling accounts: the flag, the authenticator's cache, the sessions.

Called by the admin API (``PATCH /api/v1/admin/users/{name}``). Disabling an account
marks it inactive in the database (the authenticator then refuses it: login 403,
tokens 401), drops what the authenticator cached about it, and stops its live
sessions through the session manager's ordinary stop path: a running session is
checkpointed first (the manager's ``before_stop`` hook, as before a cull), then
stopped with the reason "account disabled by admin <name>" (the session's
``termination_reason``). A failed checkpoint is logged and does not keep the session
running: a disabled account gets no more compute.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from .auth.base import Authenticator
from .sessions.manager import SessionManager
from .sessions.session import ACTIVE, Session
from .store import Store


@dataclass
class AccountChange:
    """What :func:`set_account_active` did: the account's name and state, the sessions it
    stopped and those whose checkpoint failed before the stop."""

    name: str
    active: bool
    sessions_ended: list[str] = field(default_factory=list)
    checkpoint_failed: list[str] = field(default_factory=list)

    def to_api(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "active": self.active,
            "sessions_ended": self.sessions_ended,
            "checkpoint_failed": self.checkpoint_failed,
        }


async def set_account_active(
    *,
    store: Store,
    manager: SessionManager,
    authenticator: Authenticator,
    name: str,
    active: bool,
    by: str,
) -> AccountChange | None:
    """(Re-)enable or disable account ``name``; ``None`` if there is no such account."""
    if not await store.set_user_active(name, active):
        return None
    authenticator.forget_user(name)
    change = AccountChange(name, active)
    if active:
        manager.log.info("admin %s re-enabled account %s", by, name)
        return change
    manager.log.info("admin %s disabled account %s", by, name)
    reason = f"account disabled by admin {by}"
    live = [s for s in manager.sessions.values() if s.user.name == name and s.status in ACTIVE]
    results = await asyncio.gather(
        *(_stop(manager, s, reason, f"admin {by}", change) for s in live), return_exceptions=True
    )
    for s, result in zip(live, results, strict=True):
        if isinstance(result, BaseException):
            manager.log.error("could not stop session %s of %s: %s", s.id, name, result)
        else:
            change.sessions_ended.append(s.id)
    return change


async def _stop(
    manager: SessionManager, s: Session, reason: str, by: str, change: AccountChange
) -> None:
    if manager.before_stop is not None and s.status == "running":
        try:
            await manager.before_stop(s, "stop")
        except Exception as e:  # a disabled account's session stops anyway
            manager.log.warning("no checkpoint of session %s before disabling: %s", s.id, e)
            change.checkpoint_failed.append(s.id)
    await s.stop("stopped", reason, by=by)
