"""The installed PHOEBE passbands, listed once by a short-lived worker process and cached.

The hub never imports PHOEBE (it is slow to import and large), so ``GET
/system/passbands`` asks ``python -m phoebe_kernel_worker --list-passbands`` the first
time and keeps the answer. Concurrent first requests share one subprocess.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import orjson

from .errors import Unavailable


class PassbandsCache:
    """Lists passbands on first use; created by the app, used by the passbands handler."""

    def __init__(
        self,
        cmd: list[str] | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.cmd = cmd or [sys.executable, "-m", "phoebe_kernel_worker", "--list-passbands"]
        self.env = env
        self.timeout = timeout
        self._result: dict[str, Any] | None = None
        self._pending: asyncio.Future[dict[str, Any]] | None = None

    async def get(self) -> dict[str, Any]:
        if self._result is not None:
            return self._result
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._list())
        try:
            self._result = await asyncio.shield(self._pending)
        except Unavailable:
            self._pending = None
            raise
        return self._result

    async def _list(self) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            *self.cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise Unavailable("Listing passbands timed out") from None
        if proc.returncode != 0:
            last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise Unavailable(f"Could not list passbands: {last[0][:200]}")
        result = orjson.loads(out.strip().splitlines()[-1])
        if not isinstance(result, dict):
            raise Unavailable("Could not list passbands: malformed answer")
        return result
