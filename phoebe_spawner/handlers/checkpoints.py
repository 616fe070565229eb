"""The checkpoints API (``/api/v1/...``): save on demand, list, download, delete.

Starting a session from a checkpoint goes through the compatible
``POST /dash/start-session`` with ``{"checkpoint_id": ...}`` in its metadata.
"""

from __future__ import annotations

from typing import Any

from ..checkpoints import CheckpointManager, checkpoint_to_api
from .base import ApiError, BaseHandler

MAX_LIMIT = 500


class CheckpointsBase(BaseHandler):
    @property
    def checkpoints(self) -> CheckpointManager:
        checkpoints: CheckpointManager = self.hub.checkpoints
        return checkpoints

    def to_api(self, row: dict[str, Any]) -> dict[str, Any]:
        return checkpoint_to_api(row, self.hub.base_url.rstrip("/"))


class SessionCheckpointsHandler(CheckpointsBase):
    """``POST /api/v1/sessions/{id}/checkpoints`` body ``{"name"?}`` -> 201 checkpoint."""

    async def post(self, session_id: str) -> None:
        body = self.json_body(allow_empty=True) or {}
        if not isinstance(body, dict):
            raise ApiError(400, "Request body must be a JSON object (or empty)")
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > 255):
            raise ApiError(400, "name must be a string of at most 255 characters")
        session = await self.manager.find(self.user, session_id)
        session.check_running()
        row = await self.checkpoints.save(session, "manual", name=name)
        self.set_header("Location", self.to_api(row)["links"]["self"])
        self.write_json(self.to_api(row), status=201)


class CheckpointListHandler(CheckpointsBase):
    """``GET /api/v1/checkpoints?session_id=&limit=&offset=`` -> the caller's checkpoints."""

    async def get(self) -> None:
        try:
            limit = int(self.get_query_argument("limit", "100"))
            offset = int(self.get_query_argument("offset", "0"))
        except ValueError:
            raise ApiError(400, "limit and offset must be integers") from None
        if not 1 <= limit <= MAX_LIMIT or offset < 0:
            raise ApiError(400, f"limit must be 1-{MAX_LIMIT} and offset >= 0")
        rows, total = await self.checkpoints.list(
            self.user,
            session_id=self.get_query_argument("session_id", None),
            limit=limit,
            offset=offset,
        )
        self.write_json(
            {
                "checkpoints": [self.to_api(r) for r in rows],
                "total": total,
                "limit": limit,
                "offset": offset,
            }
        )


class CheckpointHandler(CheckpointsBase):
    """``GET /api/v1/checkpoints/{id}`` (metadata) and ``DELETE`` (remove it)."""

    async def get(self, checkpoint_id: str) -> None:
        self.write_json(self.to_api(await self.checkpoints.get(self.user, checkpoint_id)))

    async def delete(self, checkpoint_id: str) -> None:
        await self.checkpoints.delete(self.user, checkpoint_id)
        self.write_json({"success": True})


class CheckpointBundleHandler(CheckpointsBase):
    """``GET /api/v1/checkpoints/{id}/bundle`` -> the saved bundle (PHOEBE's JSON)."""

    async def get(self, checkpoint_id: str) -> None:
        row = await self.checkpoints.get(self.user, checkpoint_id)
        data = await self.checkpoints.read(row)
        self.set_header("Content-Disposition", f'attachment; filename="{checkpoint_id}.json"')
        self.finish(data)
