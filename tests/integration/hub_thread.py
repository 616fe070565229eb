"""A real hub on its own thread, for testing the synchronous client library.

The client blocks (``http.client``), so its tests are plain synchronous tests and the
hub runs on an event loop in a background thread: the test's main thread is then
free to receive a real SIGINT (Ctrl-C) while the client waits for a job, just as in a
notebook. Configured like ``make_hub`` (``hub_config`` in ``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import os
import threading
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from phoebe_spawner.app import PhoebeSpawnerApp

from ..conftest import hub_config


class ThreadedHub:
    """``with ThreadedHub(tmp_path, auth_mode="jwt") as hub: hub.url ...``"""

    def __init__(
        self, data_dir: Path, *, auth_mode: str = "none", phoebe: bool = False, **overrides: Any
    ) -> None:
        c = hub_config(data_dir, auth_mode=auth_mode, phoebe=phoebe, **overrides)
        self.config = c
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="hub", daemon=True)
        self.app: PhoebeSpawnerApp | None = None
        self.url = ""

    def run(self, coro: Any, timeout: float = 120) -> Any:
        """Run a coroutine on the hub's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> ThreadedHub:
        self.thread.start()

        async def setup() -> PhoebeSpawnerApp:
            app = PhoebeSpawnerApp(config=self.config)
            app.log.setLevel("DEBUG" if os.environ.get("PHOEBE_SPAWNER_TEST_DEBUG") else "WARNING")
            await app.setup()
            return app

        self.app = self.run(setup())
        base = self.config.PhoebeSpawnerApp.get("base_url", "/")
        self.url = f"http://127.0.0.1:{self.app.bound_port}{base}"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.app is not None:
                self.run(self.app.cleanup())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            self.loop.close()

    def http(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """A plain urllib request (outside the client under test); returns the JSON."""
        data = orjson.dumps(body) if body is not None else (b"" if method == "POST" else None)
        request = urllib.request.Request(self.url + path.lstrip("/"), data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=60) as response:
            return orjson.loads(response.read())

    def register(self, email: str, password: str = "correct horse battery") -> str:  # noqa: S107
        """Register a jwt-mode user; returns the token."""
        token: str = self.http("POST", "auth/register", {"email": email, "password": password})[
            "access_token"
        ]
        return token
