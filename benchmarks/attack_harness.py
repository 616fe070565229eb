"""The harness of benchmarks/attacks.py: the hub it starts with default settings, the
HTTP client and the accounts the attacks go through, and the pinger that measures the
other users' sessions meanwhile.

attacks.py starts the hub (:func:`default_hub`), registers its users (:func:`register`)
and runs a :class:`Pinger`; the attack classes (``attack_*.py``) send their requests
with :func:`call`, :func:`new_client` and :class:`User` and judge the :class:`Answer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import psutil
from common import REPO, emit

BENCH = "attacks"
REQUEST_TIMEOUT = 30.0  # a client-side bound on every request of an attack
PING_BODY = orjson.dumps({"command": "ping"})


class HubDidNotStart(RuntimeError):
    """The hub did not answer /health, or the run's accounts or sessions could not be set
    up: nothing was measured (exit code 1)."""


# -- the hub ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class HubProcess:
    url: str
    port: int
    pid: int
    data: str
    descendants: dict[int, float] = field(default_factory=dict)  # pid -> create_time

    def note_descendants(self) -> None:
        """Remember the hub's process tree (workers, fork server) so that none survives."""
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    self.descendants[child.pid] = child.create_time()


@contextlib.contextmanager
def default_hub(spawner: str | None, hub_log: str | None, extra: list[str]) -> Iterator[HubProcess]:
    """``phoebe-spawner --auth-mode=jwt`` with nothing else but the port and a temporary
    data directory (and ``--spawner`` when asked); stopped, with every process it
    started, and the directory removed after."""
    data = tempfile.mkdtemp(prefix="phoebe-attacks-")
    os.chmod(data, 0o700)
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "phoebe_spawner",
        "--auth-mode=jwt",
        f"--port={port}",
        f"--data-dir={data}",
    ]
    if spawner:
        argv.append(f"--spawner={spawner}")
    argv += extra
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
        PHOEBE_SPAWNER_JWT_SECRET=secrets.token_urlsafe(48),
    )
    log_path = os.path.join(data, "hub.log")
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=data)
    hub = HubProcess(f"http://127.0.0.1:{port}", port, proc.pid, data)
    try:
        deadline = time.monotonic() + 90
        while not _healthy(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                with open(log_path, "rb") as f:
                    tail = f.read()[-2000:].decode(errors="replace")
                raise HubDidNotStart(f"the hub did not start (exit {proc.poll()}):\n{tail}")
            time.sleep(0.2)
        yield hub
    finally:
        hub.note_descendants()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        orphans = _reap(hub.descendants)
        emit(BENCH, "cleanup", hub_exit=proc.returncode, orphans_killed=orphans)
        if hub_log:
            shutil.copyfile(log_path, hub_log)
        shutil.rmtree(data, ignore_errors=True)


def _healthy(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            s.settimeout(2)
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def cpu_seconds(pid: int) -> tuple[float, dict[int, float]]:
    """User + system CPU seconds of the hub process and of each process under it."""

    def used(p: psutil.Process) -> float:
        t = p.cpu_times()
        return float(t.user + t.system)

    try:
        hub = psutil.Process(pid)
        own = used(hub)
        children = {}
        for child in hub.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                children[child.pid] = used(child)
        return own, children
    except psutil.Error:
        return 0.0, {}


def _reap(known: dict[int, float]) -> int:
    """Kill what the hub left behind of the processes it had started (by pid and start
    time, so a reused pid is never hit); how many there were."""
    left = []
    for pid, created in known.items():
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            if p.create_time() == created:
                left.append(p)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(left, timeout=10)
    return len(left)


# -- HTTP -------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int  # 0: no HTTP answer (timeout, connection error)
    body: bytes
    seconds: float

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None

    @property
    def refused(self) -> bool:
        """A clear refusal: a 4xx, or a 200 with ``success: false`` and an error."""
        if 400 <= self.status < 500:
            return True
        reply = self.json()
        return (
            self.status == 200
            and isinstance(reply, dict)
            and reply.get("success") is False
            and bool(reply.get("error"))
        )

    def head(self) -> str:
        """The first 120 characters (a token in the answer is not shown)."""
        body = self.body
        reply = self.json() if b'"access_token"' in body else None
        if isinstance(reply, dict) and "access_token" in reply:
            body = orjson.dumps({**reply, "access_token": "<token>"})
        return body[:120].decode(errors="replace")


def new_client(token: str | None = None, source: str | None = None) -> aiohttp.ClientSession:
    """A client (bearer token, no cookies) whose connections come from ``source``."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    connector = aiohttp.TCPConnector(
        limit=16, local_addr=(source, 0) if source else None, force_close=False
    )
    return aiohttp.ClientSession(
        connector=connector, headers=headers, cookie_jar=aiohttp.DummyCookieJar()
    )


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: bytes | None = None,
    timeout: float = REQUEST_TIMEOUT,
) -> Answer:
    t0 = time.perf_counter()
    try:
        async with http.request(
            method, url, data=body, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            data = await resp.read()
            return Answer(resp.status, data, time.perf_counter() - t0)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Answer(0, repr(exc).encode(), time.perf_counter() - t0)


@dataclass
class User:
    email: str
    password: str
    token: str
    http: aiohttp.ClientSession
    url: str

    async def post(self, path: str, body: Any = None, timeout: float = REQUEST_TIMEOUT) -> Answer:
        raw = body if isinstance(body, bytes) else orjson.dumps(body if body is not None else {})
        return await call(self.http, "POST", self.url + path, raw, timeout)

    async def get(self, path: str) -> Answer:
        return await call(self.http, "GET", self.url + path)

    async def send(self, sid: str, command: str, **kwargs: Any) -> Answer:
        return await self.post(f"/send/{sid}", {"command": command, **kwargs})

    async def start(self) -> str:
        answer = await self.post("/dash/start-session", timeout=120)
        if answer.status != 200:
            raise RuntimeError(f"start-session: {answer.status} {answer.head()}")
        return str(answer.json()["session_id"])


async def register(url: str, email: str) -> User:
    password = secrets.token_urlsafe(15)  # 20 characters, never a common password
    async with new_client() as anon:
        answer = await call(
            anon,
            "POST",
            url + "/auth/register",
            orjson.dumps({"email": email, "password": password}),
        )
    if answer.status != 200:
        raise HubDidNotStart(f"register {email}: {answer.status} {answer.head()}")
    token = str(answer.json()["access_token"])
    return User(email, password, token, new_client(token), url)


# -- the pinger -------------------------------------------------------------------------


class Pinger:
    """Pings each target session every ``interval`` from a process of its own (a client on
    another machine, in effect: nothing the attacks' client does in this process delays a
    ping); keeps (start, seconds, status) of every ping, the start on the system-wide
    monotonic clock."""

    def __init__(self, url: str, targets: dict[str, tuple[str, str]], interval: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.stopping = ctx.Event()
        self.queue: Any = ctx.Queue()
        self.proc = ctx.Process(
            target=_ping_process,
            args=(url, targets, interval, self.stopping, self.queue),
            name="pinger",
            daemon=True,
        )
        self.samples: dict[str, list[tuple[float, float, int]]] = {n: [] for n in targets}

    def start(self) -> None:
        self.proc.start()

    def _drain(self) -> None:
        while True:
            try:
                name, t0, seconds, status = self.queue.get_nowait()
            except queue.Empty:
                return
            self.samples[name].append((t0, seconds, status))

    async def window(self, name: str, t0: float, t1: float) -> list[tuple[float, float, int]]:
        """The pings that started in [t0, t1] (waits, at most 15 s, for the pings under
        way at ``t1`` to be reported)."""
        deadline = time.monotonic() + 15
        self._drain()
        while self.proc.is_alive() and time.monotonic() < deadline:
            if self.samples[name] and self.samples[name][-1][0] > t1:
                break
            await asyncio.sleep(0.02)
            self._drain()
        return [s for s in self.samples[name] if t0 <= s[0] <= t1]

    def stop(self) -> None:
        self.stopping.set()
        self.proc.join(timeout=15)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self._drain()
        self.queue.close()


def _ping_process(
    url: str, targets: dict[str, tuple[str, str]], interval: float, stopping: Any, out: Any
) -> None:
    async def ping(name: str) -> None:
        token, sid = targets[name]
        async with new_client(token) as http:
            next_at = time.monotonic()
            while not stopping.is_set():
                t0 = time.monotonic()
                answer = await call(http, "POST", f"{url}/send/{sid}", PING_BODY, timeout=10)
                ok = answer.status if b'"ready"' in answer.body else -answer.status or -1
                out.put((name, t0, answer.seconds, ok))
                next_at = max(next_at + interval, time.monotonic())
                await asyncio.sleep(next_at - time.monotonic())

    async def main() -> None:
        await asyncio.gather(*(ping(name) for name in targets))

    asyncio.run(main())
