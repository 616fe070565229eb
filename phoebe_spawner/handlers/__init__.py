"""Request handlers, one module per API area; :func:`routes` lists them for the app."""

from __future__ import annotations

from tornado.routing import PathMatches, Rule

from . import admin, api, checkpoints, jobs, pages, streams
from .base import HubContext, NotFoundHandler
from .routing import SMALL_BODY, SmallBody, read_whole

SESSION_ID = r"(?P<session_id>[^/]+)"
JOB_ID = r"(?P<job_id>[^/]+)"
CHECKPOINT_ID = r"(?P<checkpoint_id>[^/]+)"
USER_NAME = r"(?P<name>[^/]+)"


#: /send bodies up to this size are read with the headers instead of streamed
SMALL_SEND_BODY = SMALL_BODY


def routes(hub: HubContext, prefix: str = "/") -> list[Rule]:
    """The URL table, served under ``prefix`` (``/`` standalone, the service prefix in a hub)."""
    p = prefix.rstrip("/")
    send = rf"/send/{SESSION_ID}"
    table: list[tuple[str, type]] = [
        # the command path first: tornado tries the rules in order, for every request
        (send, api.SendHandler),
        (r"/health", api.HealthHandler),
        (r"/?", pages.RootHandler),
        (r"/admin/?", pages.AdminPageHandler),
        (r"/auth/config", api.AuthConfigHandler),
        (r"/auth/register", api.RegisterHandler),
        (r"/auth/login", api.LoginHandler),
        (r"/auth/me", api.MeHandler),
        (r"/dash/sessions", api.SessionsHandler),
        (r"/dash/start-session", api.StartSessionHandler),
        (rf"/dash/end-session/{SESSION_ID}", api.EndSessionHandler),
        (r"/dash/session-memory", api.SessionMemoryHandler),
        (rf"/dash/session-memory/{SESSION_ID}", api.SessionMemoryHandler),
        (r"/dash/port-status", api.PortStatusHandler),
        (r"/system/passbands", api.PassbandsHandler),
        # extended API
        (r"/auth/logout", api.LogoutHandler),
        (r"/api/v1/events", streams.UserEventsHandler),
        (rf"/api/v1/sessions/{SESSION_ID}/jobs", jobs.SessionJobsHandler),
        (r"/api/v1/jobs", jobs.JobListHandler),
        (rf"/api/v1/jobs/{JOB_ID}", jobs.JobHandler),
        (rf"/api/v1/jobs/{JOB_ID}/cancel", jobs.JobCancelHandler),
        (rf"/api/v1/jobs/{JOB_ID}/result", jobs.JobResultHandler),
        (rf"/api/v1/jobs/{JOB_ID}/events", jobs.JobEventsHandler),
        (rf"/api/v1/sessions/{SESSION_ID}/checkpoints", checkpoints.SessionCheckpointsHandler),
        (r"/api/v1/checkpoints", checkpoints.CheckpointListHandler),
        (rf"/api/v1/checkpoints/{CHECKPOINT_ID}", checkpoints.CheckpointHandler),
        (rf"/api/v1/checkpoints/{CHECKPOINT_ID}/bundle", checkpoints.CheckpointBundleHandler),
        (r"/api/v1/admin/sessions", admin.AdminSessionsHandler),
        (rf"/api/v1/admin/sessions/{SESSION_ID}", admin.AdminSessionHandler),
        (r"/api/v1/admin/events", admin.AdminEventsHandler),
        (rf"/api/v1/admin/users/{USER_NAME}", admin.AdminUserHandler),
        (r"/metrics", admin.MetricsHandler),
    ]
    rules: list[Rule] = []
    for path, handler in table:
        # each route twice: small bodies read whole (see routing.py), the rest streamed
        rules.append(Rule(SmallBody(p + path), read_whole(handler), {"hub": hub}))
        rules.append(Rule(PathMatches(p + path), handler, {"hub": hub}))
    # unknown paths: small requests here, the rest to the app's default (streamed) 404
    rules.append(Rule(SmallBody(r".*"), read_whole(NotFoundHandler), {"hub": hub}))
    return rules


__all__ = ["HubContext", "NotFoundHandler", "routes"]
