"""The admin API (``/api/v1/admin/...``) and ``GET /metrics``.

Admins are users whose :class:`~phoebe_spawner.auth.base.User` has ``admin`` set: the
anonymous user in mode none, accounts with the admin role in jwt mode, the admin claim
in external mode, hub admins or holders of the admin scope in hub mode. Everyone else
gets 403. The admin page (``handlers.pages``) is built on these routes.
"""

from __future__ import annotations

import hmac
import time

from ..accounts import set_account_active
from ..jobs.events import AdminEvents
from ..metrics import CONTENT_TYPE, HubMetrics
from ..sessions.session import Session
from .base import ApiError, BaseHandler
from .streams import EventStreamHandler


class AdminHandler(BaseHandler):
    """Base of the admin JSON routes: authenticated, then admins only."""

    async def prepare(self) -> None:
        await super().prepare()
        self.require_admin()


class AdminSessionsHandler(AdminHandler):
    """``GET /api/v1/admin/sessions?user=&status=``: every user's sessions, admin view."""

    async def get(self) -> None:
        users = set(self.get_query_arguments("user"))
        statuses = {s for arg in self.get_query_arguments("status") for s in arg.split(",") if s}
        now = time.time()
        sessions = [
            s.to_admin(now)
            for s in self.manager.sessions.values()
            if (not users or s.user.user_id in users) and (not statuses or s.status in statuses)
        ]
        sessions.sort(key=lambda d: d["created_at"])
        self.write_json(
            {
                "sessions": sessions,
                "capacity": self.manager.capacity(),
                "now": now,
                "last_event_id": self.admin_events.log.last_seq,
            }
        )

    @property
    def admin_events(self) -> AdminEvents:
        events: AdminEvents = self.hub.admin_events
        return events


class AdminSessionHandler(AdminHandler):
    """``GET`` one session (admin view) · ``DELETE`` ends it (checkpoint-free, like an
    owner's end-session, and like it answering once the worker is told to stop) ->
    ``{"success": true}``; 404 unknown."""

    def _session(self, session_id: str) -> Session:
        s = self.manager.sessions.get(session_id)
        if s is None:
            raise ApiError(404, f"Session {session_id} not found")
        return s

    async def get(self, session_id: str) -> None:
        self.write_json(self._session(session_id).to_admin(time.time()))

    async def delete(self, session_id: str) -> None:
        s = self._session(session_id)
        by = f"admin {self.user.name}"
        await self.manager.end_session(s.user, s.id, reason=f"ended by {by}", by=by, wait=False)
        self.write_json({"success": True})


class AdminUserHandler(AdminHandler):
    """``PATCH /api/v1/admin/users/{name}`` body ``{"active": false}``: disable an account
    (its sessions are checkpointed and stopped) or re-enable it (``true``).

    200 ``{"name", "active", "sessions_ended": [ids], "checkpoint_failed": [ids]}`` · 400
    bad body, an admin disabling themselves, or a mode without accounts to disable
    (``none``, ``hub``: JupyterHub manages its users) · 404 unknown account.
    """

    async def patch(self, name: str) -> None:
        body = self.json_body()
        if not isinstance(body, dict) or set(body) != {"active"}:
            raise ApiError(400, 'Request body must be {"active": true} or {"active": false}')
        active = body["active"]
        if not isinstance(active, bool):
            raise ApiError(400, "'active' must be true or false")
        authenticator = self.hub.authenticator
        if not authenticator.can_disable_accounts:
            raise ApiError(400, f"Accounts cannot be disabled in auth mode {authenticator.mode}")
        if not active and name == self.user.name:
            raise ApiError(400, "Admins cannot disable their own account")
        change = await set_account_active(
            store=self.hub.store,
            manager=self.manager,
            authenticator=authenticator,
            name=name,
            active=active,
            by=self.user.name,
        )
        if change is None:
            raise ApiError(404, f"User {name} not found")
        self.write_json(change.to_api())


class AdminEventsHandler(EventStreamHandler):
    """``GET /api/v1/admin/events``: every user's session events, live (SSE).

    Pass ``?last_event_id=`` (the snapshot's ``last_event_id``) or ``Last-Event-ID`` to
    get the events since a snapshot without a gap.
    """

    async def prepare(self) -> None:
        await super().prepare()
        self.require_admin()

    async def get(self) -> None:
        events: AdminEvents = self.hub.admin_events
        events.watchers += 1
        try:
            await self.stream(events.log, self.start_after(default=events.log.last_seq))
        finally:
            events.watchers -= 1


class MetricsHandler(BaseHandler):
    """``GET /metrics``: Prometheus text format, for admins or ``metrics_token`` holders.

    Like JupyterHub's own: protected unless ``authenticate_prometheus`` is off. A
    scraper sends ``Authorization: Bearer <metrics_token>``.
    """

    auth_required = False

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Type", CONTENT_TYPE)

    async def get(self) -> None:
        if self.hub.metrics_auth and not self._has_metrics_token():
            self.current_user = await self.hub.authenticator.authenticate(self)
            self.require_admin("Metrics are for admins and the metrics token")
        metrics: HubMetrics = self.hub.metrics
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(metrics.render())

    def _has_metrics_token(self) -> bool:
        token = self.hub.metrics_token
        if not token:
            return False
        scheme, _, given = self.request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() in ("bearer", "token") and hmac.compare_digest(
            given.strip().encode(), token.encode()
        )
