"""Jobs: long commands run asynchronously, with live progress, cancellation and history.

A job is one command (``run_compute``, ``run_solver`` or any other) submitted to a
session; the submitter gets its id at once (202) and follows it through
``GET /api/v1/jobs/{id}`` or its Server-Sent Events stream. The :class:`JobManager`
(built by the app, called by the job handlers) runs each job through
:meth:`Session.run <phoebe_spawner.sessions.session.Session.run>`, so jobs and ``/send``
commands share one queue per session and run one at a time in arrival order; a bounded
number of jobs may wait per session.

While a job runs, the worker's iopub messages for it (progress fractions, output
lines) become events with contiguous ids in the job's :class:`EventLog`, which is also
written to the database, so a stream can be replayed from the beginning, also after a
restart. Cancelling a queued job drops it; cancelling a running one interrupts the
command in the worker (the session and its bundle survive; a worker that ignores the
interrupt is declared hung). The job manager follows sessions through their bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson
from traitlets import Any as AnyTrait
from traitlets import Float, Integer, Unicode
from traitlets.config import LoggingConfigurable

from ..auth.base import User
from ..errors import CommandTimedOut, LimitReached, SessionError, SessionNotFound, Unavailable
from ..sessions.bus import IopubMessage, SessionChanged
from ..sessions.manager import SessionManager
from ..sessions.session import Session
from ..store import DatabaseUnavailable, Store
from .events import Event, EventLog

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
STATUSES = frozenset({"queued", "running", *TERMINAL})


class JobConflict(SessionError):
    """The job is not in a state that allows this (e.g. no result yet)."""

    status = 409


@dataclass(eq=False)
class Job:
    """One job, live (queued/running) or finished."""

    id: str
    session_id: str
    user_id: str
    command: str
    status: str = "queued"
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    progress: float | None = None
    message: str | None = None
    error: str | None = None
    result_size: int | None = None
    msg_id: str | None = None
    cancel_requested: bool = False
    cancel_reason: str = "cancelled by the user"
    log: EventLog = field(default_factory=EventLog)
    task: asyncio.Task[None] | None = None
    result: bytes | None = None  # kept until the database has it
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def to_api(self, prefix: str = "") -> dict[str, Any]:
        base = f"{prefix}/api/v1/jobs/{self.id}"
        return {
            "job_id": self.id,
            "session_id": self.session_id,
            "user_id": self.user_id,
            "command": self.command,
            "status": self.status,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "progress": self.progress,
            "message": self.message,
            "error": self.error,
            "result_size": self.result_size,
            "last_event_id": self.log.last_seq,
            "links": {
                "self": base,
                "events": f"{base}/events",
                "result": f"{base}/result",
                "cancel": f"{base}/cancel",
            },
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        """A finished (or orphaned) job as stored; its events are loaded on demand."""
        job = cls(
            id=row["id"],
            session_id=row["session_id"],
            user_id=row["user_id"],
            command=row["command"],
            status=row["status"],
            created_at=row["created_at"],
            started_at=row.get("started_at"),
            finished_at=row.get("finished_at"),
            progress=row.get("progress"),
            message=row.get("message"),
            error=row.get("error"),
            result_size=row.get("result_size"),
            log=EventLog(first_seq=int(row.get("last_event_id") or 0) + 1),
        )
        job.log.close()
        job.done.set()
        return job


class JobManager(LoggingConfigurable):
    """Owns all live jobs; finished ones are read back from the database."""

    max_jobs_per_session = Integer(
        8, help="Jobs one session may have queued or running at once (429 beyond)."
    ).tag(config=True)
    job_timeout = Float(
        3600.0,
        help="""Seconds a job may run (from its start, not counting its wait in the queue)
        before it is interrupted and failed (0 = no limit). A worker that ignores the
        interrupt for SessionManager.interrupt_grace is stopped and its session fails,
        with the reason in the job's error.""",
    ).tag(config=True)
    finished_in_memory = Integer(
        256, help="Finished jobs kept in memory (older ones are read from the database)."
    ).tag(config=True)
    max_events_in_memory = Integer(
        20000, help="Events of one job kept in memory (all of them are in the database)."
    ).tag(config=True)

    url_prefix = Unicode("", help="The hub's base URL without its trailing slash (set by the app).")
    manager = AnyTrait(help="The SessionManager (set by the app).")
    store = AnyTrait(help="The Store (set by the app).")
    user_events = AnyTrait(help="The UserEvents bus for job-finished events (set by the app).")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._live: dict[str, Job] = {}
        self._finished: OrderedDict[str, Job] = OrderedDict()
        self._by_msg: dict[str, Job] = {}
        self._sessions: SessionManager = self.manager
        self._store: Store = self.store
        self._sessions.bus.subscribe(IopubMessage, self._on_iopub)
        self._sessions.bus.subscribe(SessionChanged, self._on_session_changed)

    # --- start-up and shutdown ---------------------------------------------------------

    async def recover(self) -> None:
        """Jobs a previous hub left unfinished cannot be followed: mark them failed."""
        ids = await self._store.fail_unfinished_jobs(
            "the hub restarted while this job was queued or running", now=time.time()
        )
        if ids:
            self.log.warning("marked %d unfinished jobs of a previous run failed", len(ids))

    async def shutdown(self) -> None:
        """Cancel what is still queued or running (their sessions are going away)."""
        for job in list(self._live.values()):
            job.cancel_requested = True
            if job.task is not None:
                job.task.cancel()
        await asyncio.gather(
            *(j.task for j in self._live.values() if j.task), return_exceptions=True
        )
        await self._store.flush_job_events()

    # --- queries ----------------------------------------------------------------------------

    async def get(self, user: User, job_id: str) -> Job:
        """The job if ``user`` owns it; 404 otherwise (other users' jobs do not exist)."""
        job = self._live.get(job_id) or self._finished.get(job_id)
        if job is None:
            row = await self._store.get_job(job_id)
            job = Job.from_row(row) if row else None
        if job is None or job.user_id != user.user_id:
            raise SessionNotFound(f"Job {job_id} not found")
        return job

    async def list_jobs(
        self,
        user: User,
        *,
        session_id: str | None,
        statuses: list[str] | None,
        limit: int,
        offset: int,
    ) -> tuple[list[Job], int]:
        rows, total = await self._store.list_jobs(
            user_id=user.user_id,
            session_id=session_id,
            statuses=statuses,
            limit=limit,
            offset=offset,
        )
        jobs = [
            self._live.get(r["id"]) or self._finished.get(r["id"]) or Job.from_row(r) for r in rows
        ]
        return jobs, total

    async def result(self, user: User, job_id: str) -> bytes:
        """The worker's reply to a finished job (``{"success": ..., "result"|"error": ...}``)."""
        job = await self.get(user, job_id)
        if job.status not in TERMINAL:
            raise JobConflict(f"Job {job_id} is {job.status}; its result is not ready")
        if job.result is not None:
            return job.result
        row = await self._store.get_job(job_id, with_result=True)
        if not row or row.get("result") is None:
            raise JobConflict(f"Job {job_id} was {job.status} and has no result")
        result: bytes = row["result"]
        return result

    async def stored_events(self, job: Job, after: int, upto: int) -> list[Event]:
        """Events ``after < seq <= upto`` from the database (replays older than memory)."""
        await self._store.flush_job_events()
        rows = await self._store.get_job_events(job.id, after=after, limit=max(0, upto - after))
        return [Event(r["seq"], r["type"], orjson.loads(r["data"]), r["ts"]) for r in rows]

    # --- submit, run, cancel -------------------------------------------------------------------

    async def submit(self, user: User, session_id: str, body: bytes, command: str) -> Job:
        """Queue ``command`` on the user's session; returns at once with the queued job."""
        s = await self._sessions.find(user, session_id)
        s.check_running()
        waiting = [j for j in self._live.values() if j.session_id == session_id]
        if len(waiting) >= self.max_jobs_per_session:
            raise LimitReached(
                f"Session {session_id} already has {len(waiting)} jobs queued or running "
                f"(at most {self.max_jobs_per_session})"
            )
        job = Job(
            id=str(uuid.uuid4()),
            session_id=session_id,
            user_id=user.user_id,
            command=command,
            log=EventLog(max_events=self.max_events_in_memory),
        )
        try:
            await self._store.create_job(
                id=job.id,
                session_id=session_id,
                user_id=user.user_id,
                command=command,
                request=body,
                created_at=job.created_at,
            )
        except DatabaseUnavailable as e:
            raise Unavailable(f"Database unavailable: {e}") from None
        self._live[job.id] = job
        self._emit(job, "queued", {"command": command, "position": len(waiting)})
        job.task = asyncio.create_task(self._run(job, s, body), name=f"job-{job.id}")
        return job

    async def _run(self, job: Job, s: Session, body: bytes) -> None:
        timeout = self.job_timeout or None
        try:
            reply = await s.run(
                body,
                job.command,
                timeout=timeout,
                on_sent=lambda msg_id: self._started(job, msg_id),
                count_wait=False,
            )
        except asyncio.CancelledError:
            await self._finish(job, "cancelled", job.cancel_reason)
            return
        except CommandTimedOut as e:
            await self._timed_out(job, s, e)
            return
        except SessionError as e:
            status = "cancelled" if job.cancel_requested else "failed"
            await self._finish(job, status, str(e))
            return
        except Exception:
            self.log.exception("job %s failed in the hub", job.id)
            await self._finish(job, "failed", "internal error (see the hub log)")
            return
        if reply.status == "interrupted" and job.cancel_requested:
            await self._finish(job, "cancelled", "cancelled by the user", reply.content)
        elif reply.status == "ok":
            await self._finish(job, "succeeded", None, reply.content)
        else:
            await self._finish(job, "failed", _reply_error(reply.content), reply.content)

    async def _timed_out(self, job: Job, s: Session, error: CommandTimedOut) -> None:
        """A job past ``job_timeout``: wait for the interrupt's outcome (the worker idle
        again, or stopped as hung after ``interrupt_grace``), then fail the job saying which."""
        detail = f"the job exceeded job_timeout ({self.job_timeout:g} s)"
        try:
            if error.recovery is not None:
                await asyncio.shield(error.recovery)
        except asyncio.CancelledError:
            await self._finish(job, "failed", f"{detail}; the hub shut down meanwhile")
            return
        if s.status == "failed" and s.reason:
            detail = f"{detail}; the session was stopped: {s.reason}"
        else:
            detail = f"{detail} and was interrupted"
        await self._finish(job, "failed", detail)

    def _started(self, job: Job, msg_id: str) -> None:
        job.msg_id = msg_id
        job.status = "running"
        job.started_at = time.time()
        self._by_msg[msg_id] = job
        self._emit(job, "started", {"command": job.command})
        self._sessions.tasks.spawn(self._write(job, status="running", started_at=job.started_at))

    async def cancel(self, user: User, job_id: str) -> Job:
        """Cancel a queued or running job; returns it once it has ended."""
        job = await self.get(user, job_id)
        if job.status in TERMINAL:
            raise JobConflict(f"Job {job_id} already {job.status}")
        job.cancel_requested = True
        if job.status == "queued" and job.task is not None:
            job.task.cancel()
            await job.done.wait()
            return job
        s = self._sessions.sessions.get(job.session_id)
        if s is not None and s.channel is not None and job.msg_id is not None:
            # a gone worker ends the job anyway; a hung one fails its session, which ends it
            await s.interrupt_or_fail(job.msg_id, job.command, cause="a cancel")
        await job.done.wait()
        return job

    async def _finish(
        self, job: Job, status: str, error: str | None, result: bytes | None = None
    ) -> None:
        job.status = status
        job.error = error
        job.finished_at = time.time()
        job.result = result
        job.result_size = len(result) if result is not None else None
        if status == "succeeded":
            job.progress = 1.0
        if job.msg_id:
            self._by_msg.pop(job.msg_id, None)
        data: dict[str, Any] = {"status": status}
        if status == "succeeded":
            data["result_url"] = job.to_api(self.url_prefix)["links"]["result"]
        else:
            data["detail"] = error
        self._emit(job, status, data)
        job.log.close()
        self._live.pop(job.id, None)
        self._finished[job.id] = job
        while len(self._finished) > self.finished_in_memory:
            self._finished.popitem(last=False)
        job.done.set()
        if self.user_events is not None:
            self.user_events.publish(
                job.user_id,
                "job_finished",
                {
                    "job_id": job.id,
                    "session_id": job.session_id,
                    "command": job.command,
                    "status": status,
                },
            )
        # the history is stored before the outcome (on failure it stays buffered for retry)
        with contextlib.suppress(DatabaseUnavailable):
            await self._store.flush_job_events()
        written = await self._write(
            job,
            status=status,
            finished_at=job.finished_at,
            error=(error or "")[:2000] or None,
            result=result,
            result_size=job.result_size,
            progress=job.progress,
            message=job.message,
        )
        if written:
            job.result = None  # the database has it now

    async def _write(self, job: Job, **fields: Any) -> bool:
        try:
            await self._store.update_job(job.id, **fields)
            return True
        except (DatabaseUnavailable, KeyError) as e:
            self.log.warning("could not record job %s (%s): %s", job.id, fields.get("status"), e)
            return False

    # --- events ---------------------------------------------------------------------------------

    def _emit(self, job: Job, type: str, data: dict[str, Any]) -> None:
        event = job.log.append(type, data)
        self._store.log_job_event(
            job_id=job.id, seq=event.seq, ts=event.ts, type=type, data=orjson.dumps(data)
        )

    def _on_iopub(self, event: IopubMessage[Session]) -> None:
        msg = event.message
        job = self._by_msg.get(msg.parent_id or "")
        if job is None or job.status != "running":
            return
        try:
            content = msg.json()
        except orjson.JSONDecodeError:
            return
        if msg.msg_type == "progress":
            job.progress = float(content.get("fraction", 0.0))
            job.message = str(content.get("message", ""))[:512]
            self._emit(job, "progress", {"fraction": job.progress, "message": job.message})
        elif msg.msg_type == "stream":
            self._emit(job, "log", {"stream": content.get("name"), "line": content.get("text")})

    def _on_session_changed(self, change: SessionChanged[Session]) -> None:
        s = change.session
        if change.event in ("stopping", "failed"):
            for job in list(self._live.values()):
                if job.session_id == s.id and job.status == "queued" and job.task is not None:
                    job.cancel_requested = True
                    job.cancel_reason = f"the session was {s.status} before the job started"
                    job.task.cancel()


def _reply_error(content: bytes) -> str:
    try:
        error = orjson.loads(content).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return "the worker's reply was not understood"
    return str(error)[:2000] if error else "the command failed"
