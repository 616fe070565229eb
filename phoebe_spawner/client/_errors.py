"""The exceptions :class:`~phoebe_spawner.client.PhoebeClient` raises.

Every failure a caller can meet is one of these (or, for Ctrl-C during a job,
:class:`ComputationCancelled`); the client never lets a bare ``http.client`` or socket
error escape. HTTP errors carry the hub's ``detail`` and status; :func:`error_for_status`
maps a response onto the right class and is called by the transport for every non-2xx
answer. Messages never contain tokens or passwords.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "BadRequest",
    "CommandTimeout",
    "ComputationCancelled",
    "Conflict",
    "HubConnectionError",
    "HubTimeout",
    "JobCancelled",
    "JobFailed",
    "LimitReached",
    "PermissionDeniedError",
    "PhoebeClientError",
    "PhoebeError",
    "RateLimited",
    "RequestTooLarge",
    "ServerError",
    "SessionEnded",
    "SessionNotFound",
    "WorkerUnavailable",
    "error_for_status",
]


class PhoebeClientError(Exception):
    """Base of every error the client raises (except :class:`ComputationCancelled`).

    ``status`` is the HTTP status when the hub answered (``None`` otherwise) and
    ``detail`` the hub's human-readable reason, which is also ``str(exc)``.
    """

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


class ServerError(PhoebeClientError):
    """An HTTP error status without a more specific class here (e.g. 500, 507)."""


class BadRequest(ServerError):
    """400: the hub refused the request as malformed (bad JSON, no command, bad query)."""


class AuthenticationError(PhoebeClientError):
    """401 (missing, wrong or expired token; wrong login), or credentials are missing."""


class PermissionDeniedError(PhoebeClientError):
    """403: authenticated, but not allowed (another user's session, missing scope,
    disabled account)."""


class SessionNotFound(PhoebeClientError):
    """404: the session (or job, or checkpoint) does not exist for this user."""


class Conflict(ServerError):
    """409: e.g. a job's result asked for before it finished, or a cancel after it ended."""


class RequestTooLarge(ServerError):
    """413: the request body is over the hub's limit."""


class LimitReached(PhoebeClientError):
    """429: a per-user or capacity limit was reached (too many sessions or queued jobs).

    ``retry_after`` is the hub's ``Retry-After`` in seconds when it sent one.
    """

    def __init__(self, detail: str, status: int | None = 429, retry_after: float | None = None):
        super().__init__(detail, status)
        self.retry_after = retry_after


class RateLimited(LimitReached):
    """429 with ``Retry-After``: too many requests of one kind (e.g. session starts);
    try again after ``retry_after`` seconds."""


class WorkerUnavailable(PhoebeClientError):
    """503: the session's worker died or failed to start, the session is not running,
    or the hub is overloaded. ``retry_after`` is the hub's ``Retry-After`` in seconds
    when it sent one (the hub expects trying again then to work: a busy database, too
    many connections)."""

    def __init__(self, detail: str, status: int | None = 503, retry_after: float | None = None):
        super().__init__(detail, status)
        self.retry_after = retry_after


class SessionEnded(WorkerUnavailable):
    """410: the hub (or an admin) ended the session: culled when idle or past its maximum
    age, over its disk quota, failed, ended by an admin, or stopped at a hub shutdown.

    ``reason`` says why; ``checkpoint_id`` names the checkpoint the hub saved at its end
    (``None`` when none was), which :meth:`PhoebeClient.restart_from_checkpoint
    <phoebe_spawner.client.PhoebeClient.restart_from_checkpoint>` starts a new session
    from. A :class:`WorkerUnavailable`, which a failed session raised before. A session
    you ended yourself raises :class:`SessionNotFound` instead.
    """

    def __init__(
        self,
        detail: str,
        status: int | None = 410,
        reason: str | None = None,
        checkpoint_id: str | None = None,
    ) -> None:
        super().__init__(detail, status)
        self.reason = reason
        self.checkpoint_id = checkpoint_id


class CommandTimeout(PhoebeClientError):
    """504: the command exceeded the hub's timeout; it was interrupted in the worker and
    the session is still usable."""


class PhoebeError(PhoebeClientError):
    """PHOEBE itself raised, or the worker refused the command or its arguments (the hub
    answered 200 with ``success: false``, or the job failed).

    ``error`` is the worker's error text, ``command`` the command that failed.
    """

    def __init__(self, error: str, command: str | None = None) -> None:
        prefix = f"{command}: " if command and not error.startswith(f"{command}:") else ""
        super().__init__(f"{prefix}{error}", 200)
        self.error = error
        self.command = command


class JobCancelled(PhoebeClientError):
    """A job this client waited for was cancelled by someone else (another client, an
    admin, or the session ending). ``job_id`` names it."""

    def __init__(self, detail: str, job_id: str) -> None:
        super().__init__(detail)
        self.job_id = job_id


class JobFailed(PhoebeClientError):
    """A job ended ``failed`` without a reply from PHOEBE: the worker died, the hub's
    job timeout struck, or the hub restarted. ``job_id`` names it."""

    def __init__(self, detail: str, job_id: str) -> None:
        super().__init__(detail)
        self.job_id = job_id


class HubConnectionError(PhoebeClientError, ConnectionError):
    """The hub could not be reached, or the connection broke before a full answer.

    ``may_have_run`` is True when a non-idempotent request (a command) may have reached
    the hub before the connection broke: it was not resent.
    """

    def __init__(self, detail: str, may_have_run: bool = False) -> None:
        PhoebeClientError.__init__(self, detail)
        self.may_have_run = may_have_run

    def __str__(self) -> str:
        return self.detail


class HubTimeout(HubConnectionError, TimeoutError):
    """No answer within the client's own read timeout (not the hub's 504)."""


class ComputationCancelled(KeyboardInterrupt):
    """Raised instead of KeyboardInterrupt when Ctrl-C (or a notebook's stop button)
    stopped a job: the job was cancelled on the hub (``confirmed`` says whether the hub
    confirmed it) and the session is still usable. Catching ``KeyboardInterrupt``
    catches this too."""

    def __init__(self, detail: str, job_id: str, confirmed: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.job_id = job_id
        self.confirmed = confirmed

    def __str__(self) -> str:
        return self.detail


_BY_STATUS: dict[int, type[PhoebeClientError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: SessionNotFound,
    409: Conflict,
    413: RequestTooLarge,
    503: WorkerUnavailable,
    504: CommandTimeout,
}


def error_for_status(
    status: int, detail: str, retry_after: str | None = None, body: Any = None
) -> PhoebeClientError:
    """The exception for an HTTP error answer (``detail`` and, for a 410, ``reason`` and
    ``checkpoint_id`` from its JSON ``body``)."""
    if status == 410:
        fields = body if isinstance(body, dict) else {}
        reason, checkpoint_id = fields.get("reason"), fields.get("checkpoint_id")
        return SessionEnded(
            detail,
            410,
            reason if isinstance(reason, str) else None,
            checkpoint_id if isinstance(checkpoint_id, str) else None,
        )
    if status == 429:
        seconds = _parse_retry_after(retry_after)
        cls = RateLimited if seconds is not None else LimitReached
        return cls(detail, 429, seconds)
    if status == 503:
        return WorkerUnavailable(detail, 503, _parse_retry_after(retry_after))
    return _BY_STATUS.get(status, ServerError)(detail, status)


def _parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
