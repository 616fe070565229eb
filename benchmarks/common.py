"""What the benchmark scripts share: the HTTP client, a hub they can start, statistics,
JSON-lines output and the human summary.

Every script takes ``--url`` and ``--token`` for a running hub; without ``--url`` it
starts a hub of its own (:func:`local_hub`) in a temporary data directory, with the
backend the measurement needs, and stops it at the end. Results go to stdout as one
JSON object per line (``{"bench": ..., "case": ..., ...}``), then a summary table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import aiohttp
import orjson

os.environ.setdefault("PHOEBE_ENABLE_ONLINE_PASSBANDS", "FALSE")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS: list[dict[str, Any]] = []


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--url", help="a running hub (default: start one for this run)")
    p.add_argument("--token", help="a bearer token for --url (auth modes other than none)")
    return p


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean of ``values`` in milliseconds (input in seconds)."""
    ms = sorted(1000 * v for v in values)
    if not ms:
        return {}

    def pct(q: float) -> float:
        return ms[min(len(ms) - 1, round(q * (len(ms) - 1)))]

    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p90_ms": round(pct(0.90), 3),
        "p99_ms": round(pct(0.99), 3),
        "max_ms": round(ms[-1], 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


def emit(bench: str, case: str, **fields: Any) -> dict[str, Any]:
    """Print one JSON result line and keep it for the summary."""
    row = {"bench": bench, "case": case, **fields}
    RESULTS.append(row)
    print(orjson.dumps(row).decode(), flush=True)
    return row


def machine() -> dict[str, Any]:
    """Load and cores when the run started (quote them with the numbers)."""
    return {"load": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}


def summary(title: str, lines: list[str]) -> None:
    print(f"\n== {title} ==  (load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores)")
    for line in lines:
        print("  " + line)


class Hub:
    """A hub to measure: its base URL and how to talk to it."""

    def __init__(self, url: str, token: str | None, pid: int | None = None) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.pid = pid
        self.http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Hub:
        connector = aiohttp.TCPConnector(limit=256, force_close=False)
        self.http = aiohttp.ClientSession(connector=connector, headers=self.headers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.http is not None
        await self.http.close()

    async def post(self, path: str, body: bytes = b"{}", timeout: float = 600) -> bytes:
        """POST ``body``; returns the response body (raises on a non-200 status)."""
        assert self.http is not None
        async with self.http.post(
            self.url + path, data=body, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            data = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{path}: {resp.status} {data[:300]!r}")
            return data

    async def start(self) -> str:
        return str(orjson.loads(await self.post("/dash/start-session"))["session_id"])

    async def end(self, sid: str) -> None:
        await self.post(f"/dash/end-session/{sid}")

    async def send(self, sid: str, command: str, **kwargs: Any) -> Any:
        body = await self.post(f"/send/{sid}", orjson.dumps({"command": command, **kwargs}))
        reply = orjson.loads(body)
        if not reply.get("success"):
            raise RuntimeError(f"{command}: {reply}")
        return reply["result"]


async def post_raw(http: aiohttp.ClientSession, url: str, body: bytes) -> bytes:
    async with http.post(url, data=body) as resp:
        return await resp.read()


@contextlib.asynccontextmanager
async def client(url: str, token: str | None = None) -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256), headers=headers
    ) as http:
        yield http


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def local_hub(
    *,
    spawner: str | None = "local",
    pool: int = 0,
    max_sessions: int = 300,
    extra: Sequence[str] = (),
    repo: str = REPO,
) -> Iterator[tuple[str, int]]:
    """Start ``phoebe-spawner`` (auth none, SQLite, a temporary data dir) as a subprocess;
    yields ``(url, pid)`` once it answers /health, and stops it (and its workers) after.
    ``spawner=None``: the hub exactly as the README's quick start runs it (only the port,
    the data dir and the log level set; ``pool`` and ``max_sessions`` are not used).
    ``repo``: the source tree the hub runs from (another checkout, for before/after)."""
    data = tempfile.mkdtemp(prefix="phoebe-bench-")
    port = _free_port()
    argv = [sys.executable, "-m", "phoebe_spawner", f"--port={port}", f"--data-dir={data}"]
    if spawner is not None:
        argv += [
            "--auth-mode=none",
            f"--PhoebeSpawnerApp.spawner_class={spawner}",
            f"--SessionManager.warm_pool_size={pool}",
            f"--SessionManager.max_sessions={max_sessions}",
            "--SessionManager.start_rate_per_minute=0",
            "--SessionManager.idle_timeout=0",
        ]
    argv += ["--log-level=WARN", *extra]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    log = open(os.path.join(data, "hub.log"), "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=data)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the hub did not start; see {data}/hub.log") from None
                time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(data, ignore_errors=True)


async def wait_pool(hub: Hub, size: int, timeout: float = 120) -> None:
    """Wait until the hub's warm pool holds ``size`` ready workers (from ``/metrics``)."""
    import asyncio

    deadline = time.monotonic() + timeout
    assert hub.http is not None
    while size > 0:
        async with hub.http.get(hub.url + "/metrics") as resp:
            text = (await resp.text()) if resp.status == 200 else ""
        for line in text.splitlines():
            ready = line.startswith('phoebe_spawner_warm_pool_workers{state="ready"}')
            if ready and float(line.split()[-1]) >= size:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the warm pool did not reach {size} ready workers")
        await asyncio.sleep(0.2)
