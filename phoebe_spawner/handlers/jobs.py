"""The jobs API (``/api/v1/...``): submit, inspect, list, cancel, result, event stream.

Same auth and ownership rules as everything else; another user's job is 404 (it
does not exist for the caller).
"""

from __future__ import annotations

from ..jobs.manager import STATUSES, JobManager
from .base import ApiError, BaseHandler
from .streams import EventStreamHandler

MAX_LIMIT = 500


class JobsBase(BaseHandler):
    @property
    def jobs(self) -> JobManager:
        jobs: JobManager = self.hub.jobs
        return jobs

    @property
    def prefix(self) -> str:
        return self.hub.base_url.rstrip("/")


class SessionJobsHandler(JobsBase):
    """``POST /api/v1/sessions/{id}/jobs`` body ``{"command": ..., ...}`` -> 202 job."""

    async def post(self, session_id: str) -> None:
        command = self.command_request()
        job = await self.jobs.submit(self.user, session_id, self.body, command)
        body = job.to_api(self.prefix)
        self.set_header("Location", body["links"]["self"])
        self.write_json(body, status=202)


class JobListHandler(JobsBase):
    """``GET /api/v1/jobs?session_id=&status=&limit=&offset=`` -> the caller's jobs."""

    async def get(self) -> None:
        statuses = [s for arg in self.get_query_arguments("status") for s in arg.split(",") if s]
        unknown = sorted(set(statuses) - STATUSES)
        if unknown:
            raise ApiError(400, f"Unknown job status {', '.join(unknown)}")
        try:
            limit = int(self.get_query_argument("limit", "50"))
            offset = int(self.get_query_argument("offset", "0"))
        except ValueError:
            raise ApiError(400, "limit and offset must be integers") from None
        if not 1 <= limit <= MAX_LIMIT or offset < 0:
            raise ApiError(400, f"limit must be 1-{MAX_LIMIT} and offset >= 0")
        jobs, total = await self.jobs.list_jobs(
            self.user,
            session_id=self.get_query_argument("session_id", None),
            statuses=statuses or None,
            limit=limit,
            offset=offset,
        )
        self.write_json(
            {
                "jobs": [j.to_api(self.prefix) for j in jobs],
                "total": total,
                "limit": limit,
                "offset": offset,
            }
        )


class JobHandler(JobsBase):
    """``GET /api/v1/jobs/{id}`` -> the job's status, progress and timestamps."""

    async def get(self, job_id: str) -> None:
        self.write_json((await self.jobs.get(self.user, job_id)).to_api(self.prefix))


class JobCancelHandler(JobsBase):
    """``POST /api/v1/jobs/{id}/cancel`` -> the job once it has ended (409 if already over)."""

    async def post(self, job_id: str) -> None:
        self.write_json((await self.jobs.cancel(self.user, job_id)).to_api(self.prefix))


class JobResultHandler(JobsBase):
    """``GET /api/v1/jobs/{id}/result`` -> the worker's reply, as ``/send`` would return it."""

    async def get(self, job_id: str) -> None:
        self.finish(await self.jobs.result(self.user, job_id))


class JobEventsHandler(EventStreamHandler, JobsBase):
    """``GET /api/v1/jobs/{id}/events`` -> SSE: queued, started, progress, log, then
    one of succeeded/failed/cancelled. Replays from the beginning by default."""

    async def get(self, job_id: str) -> None:
        job = await self.jobs.get(self.user, job_id)
        after = self.start_after(default=0)

        async def backfill(after: int, upto: int) -> list:
            return await self.jobs.stored_events(job, after, upto)

        await self.stream(job.log, after, backfill)
