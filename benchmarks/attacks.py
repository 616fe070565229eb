"""Issue 13's attacks against a hub with default settings, with other users' pings measured.

Starts ``phoebe-spawner`` as a subprocess with its defaults (auth mode jwt with a generated
``PHOEBE_SPAWNER_JWT_SECRET``, the default spawner, real PHOEBE workers); only the port and
a temporary data directory are set. Registers an attacker and a victim, starts a session
for each (and a second one for the attacker), then runs every attack class of issue 13
through the public HTTP API against the attacker's first session:

* unit strings that made astropy compute ``10**1000000000``: ``get_value`` ``unit``,
  ``set_value`` ``unit``, ``attach_parameters`` ``default_unit``, a bundle's
  ``default_unit`` (``load_bundle`` of the session's own ``get_bundle``, edited);
* mesh cost: ``run_compute ntriangles=200000``, ``set_value`` on a compute's
  ``ntriangles``, a mesh dataset with ``columns: ["*"]`` and many times;
* a ``visible_if`` that names a hierarchy method (``hierarchy.save:x``) in a bundle;
* two ``command`` keys in a ``/send`` body over 256 KiB;
* the session-slot grab (starts until refused);
* jobs that would pin a core (the unit bomb and the mesh as jobs; a legitimately heavy
  compute, which does get through, cancelled after a while);
* half-open connections from many loopback addresses, and more than the per-address cap
  from one address;
* a failed-login burst against the victim from one address, then the victim's own
  login from another; the same from 20 addresses at once, the victim logging in
  meanwhile (each failure costs an Argon2 check in the hub).

Meanwhile a process of its own pings the victim's session and the attacker's second
session every ``--interval`` (20 ms). Each attack is repeated for at least ``--window``
seconds (bounded in count) so its ping window holds enough samples.
One JSON line per attack: the first answer's status and first 120 characters, the
slowest answer's time, and the pings' p50/p99 during the attack against an idle baseline
of the same run. The summary's check column says ``ok`` or ``MISS`` against: a clear 4xx
or ``success: false`` (or a job ending with a clear reason) within 2 s, and ping p99
≤ 50 ms (no failed ping) for the victim and the attacker's other session.

    PYTHONPATH=. .venv/bin/python benchmarks/attacks.py [--only unit_get_value,...]

It reports and does not assert: the exit code is 0 with misses, 1 if the hub (or the
run's accounts and sessions) did not start. Everything is stopped at the end and the
data directory removed. ``--hub-arg`` passes an option to the hub (recorded in the
``config`` line).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import queue
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import psutil
from common import REPO, emit, machine, percentiles, summary

BENCH = "attacks"
BOMB_UNIT = "10**1000000000 d"
ANSWER_LIMIT = 2.0  # seconds: the "clear 4xx or success:false within 2 s"
PING_P99_LIMIT = 50.0  # ms
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


# -- the attacks ------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the attacker saw: the answer that decides the attack, whether it is the
    expected clear refusal (or success, for the victim's own requests), and the slowest
    answer time among the attack's requests."""

    entry: str
    answer: Answer
    clear: bool
    slowest: float
    repeats: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


async def repeated(
    fire: Callable[[], Awaitable[Answer]], window: float, max_count: int = 1000
) -> list[Answer]:
    """Fire the same attack for ``window`` seconds (at least once, at most ``max_count``)."""
    answers: list[Answer] = []
    deadline = time.monotonic() + window
    while len(answers) < max_count and (not answers or time.monotonic() < deadline):
        answers.append(await fire())
        if answers[-1].status == 0:  # timed out: do not pile up more of the same
            break
    return answers


def refused_outcome(entry: str, answers: list[Answer], **extra: Any) -> Outcome:
    first = answers[0]
    return Outcome(
        entry,
        first,
        clear=all(a.refused for a in answers),
        slowest=max(a.seconds for a in answers),
        repeats=len(answers),
        extra={"answer_p50_s": round(statistics.median(a.seconds for a in answers), 4), **extra},
    )


class Attacks:
    def __init__(
        self,
        hub: HubProcess,
        attacker: User,
        victim: User,
        sids: dict[str, str],
        window: float,
    ) -> None:
        self.hub = hub
        self.attacker = attacker
        self.victim = victim
        self.sids = sids  # attacker (attacked), attacker_other, victim
        self.window = window

    @property
    def sid(self) -> str:
        return self.sids["attacker"]

    async def _send_repeated(self, entry: str, body: dict[str, Any] | bytes) -> Outcome:
        answers = await repeated(lambda: self.attacker.post(f"/send/{self.sid}", body), self.window)
        return refused_outcome(entry, answers)

    async def _bundle(self) -> list[dict[str, Any]]:
        answer = await self.attacker.send(self.sid, "get_bundle")
        reply = answer.json()
        if not (isinstance(reply, dict) and reply.get("success")):
            raise RuntimeError(f"get_bundle: {answer.status} {answer.head()}")
        bundle: list[dict[str, Any]] = orjson.loads(reply["result"]["bundle"])
        return bundle

    # units

    async def unit_get_value(self) -> Outcome:
        body = {"command": "get_value", "twig": "period@binary", "unit": BOMB_UNIT}
        return await self._send_repeated("/send get_value unit", body)

    async def unit_set_value(self) -> Outcome:
        body = {"command": "set_value", "twig": "period@binary", "value": 1.0, "unit": BOMB_UNIT}
        return await self._send_repeated("/send set_value unit", body)

    async def unit_attach_parameters(self) -> Outcome:
        param = {
            "ptype": "float",
            "qualifier": "attack",
            "value": 1.0,
            "description": "a unit bomb",
            "context": "ui",
            "default_unit": BOMB_UNIT,
        }
        body = {"command": "attach_parameters", "parameters": [param]}
        return await self._send_repeated("/send attach_parameters default_unit", body)

    async def unit_bundle(self) -> Outcome:
        bundle = await self._bundle()
        edited = 0
        for param in bundle:
            if param.get("default_unit") and param.get("qualifier") == "period":
                param["default_unit"] = BOMB_UNIT
                edited += 1
        body = orjson.dumps({"command": "load_bundle", "bundle": orjson.dumps(bundle).decode()})
        outcome = await self._send_repeated("/send load_bundle default_unit", body)
        outcome.extra.update(edited_parameters=edited, body_bytes=len(body))
        return outcome

    # mesh cost

    async def mesh_run_compute(self) -> Outcome:
        body = {"command": "run_compute", "ntriangles": 200_000}
        return await self._send_repeated("/send run_compute ntriangles=200000", body)

    async def mesh_set_value(self) -> Outcome:
        body = {"command": "set_value", "twig": "ntriangles@primary@phoebe01", "value": 200_000}
        return await self._send_repeated("/send set_value ntriangles@primary@phoebe01", body)

    async def mesh_columns(self, times: int = 2000) -> Outcome:
        """A mesh dataset with every column at ``times`` times, then run_compute: refused
        at the dataset or at the run (whichever refuses first decides)."""
        grid = [round(i / times, 6) for i in range(times)]
        add = await self.attacker.send(
            self.sid,
            "add_dataset",
            kind="mesh",
            dataset="attack_mesh",
            compute_times=grid,
            columns=["*"],
            overwrite=True,
        )
        if add.refused:
            return refused_outcome(
                f"/send add_dataset mesh columns=['*'] x {times} times", [add], refused_at="add"
            )
        try:
            answers = await repeated(
                lambda: self.attacker.send(self.sid, "run_compute"), self.window
            )
        finally:
            await self.attacker.send(self.sid, "remove_dataset", dataset="attack_mesh")
        return refused_outcome(
            f"mesh columns=['*'] x {times} times, then /send run_compute",
            answers,
            refused_at="run_compute",
            add_dataset_s=round(add.seconds, 3),
        )

    # visible_if and the command name

    async def visible_if(self) -> Outcome:
        bundle = await self._bundle()
        edited = 0
        for param in bundle:
            if param.get("context") == "component":
                param["visible_if"] = "hierarchy.save:x"
                edited += 1
        before = self._session_files(self.sid)
        body = orjson.dumps({"command": "load_bundle", "bundle": orjson.dumps(bundle).decode()})
        outcome = await self._send_repeated("/send load_bundle visible_if=hierarchy.save:x", body)
        outcome.extra.update(
            edited_parameters=edited,
            session_files_before=before,
            session_files_after=self._session_files(self.sid),
        )
        return outcome

    def _session_files(self, sid: str) -> int | None:
        base = os.path.join(self.hub.data, "sessions")
        for root, dirs, _ in os.walk(base):
            if sid in dirs:
                return sum(len(files) for _, _, files in os.walk(os.path.join(root, sid)))
        return None

    async def duplicate_command(self) -> Outcome:
        pad = "x" * (300 * 1024)
        body = (
            b'{"command": "get_datasets", "pad": "' + pad.encode() + b'", "command": "run_compute"}'
        )
        outcome = await self._send_repeated("/send two 'command' keys, 300 KiB body", body)
        outcome.extra["body_bytes"] = len(body)
        return outcome

    # sessions and jobs

    async def slot_grab(self, max_starts: int = 8) -> Outcome:
        """Start sessions until the hub refuses (at most ``max_starts`` attempts)."""
        started: list[str] = []
        answers: list[Answer] = []
        known = set(cpu_seconds(self.hub.pid)[1])
        new_cpu = 0.0
        try:
            for _ in range(max_starts):
                answer = await self.attacker.post("/dash/start-session", timeout=120)
                answers.append(answer)
                if answer.status != 200:
                    break
                started.append(str(answer.json()["session_id"]))
            # what the new workers cost, before they go (starting PHOEBE is most of it)
            new_cpu = sum(t for pid, t in cpu_seconds(self.hub.pid)[1].items() if pid not in known)
        finally:
            for sid in started:
                await self.attacker.post(f"/dash/end-session/{sid}")
        refusal = answers[-1]
        held = 2 + len(started)  # the attacker's two sessions of the run, and these
        return Outcome(
            "/dash/start-session until refused",
            refusal,
            clear=refusal.refused,
            slowest=refusal.seconds,
            repeats=len(answers),
            extra={
                "sessions_held_at_refusal": held,
                "started_workers_cpu_s": round(new_cpu, 2),
                "start_s": [round(a.seconds, 3) for a in answers[:-1]],
                "statuses": [a.status for a in answers],
            },
        )

    async def _job(self, body: dict[str, Any], limit: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        """Submit a job and wait (at most ``limit``) for it to end; the job and timings."""
        t0 = time.perf_counter()
        submit = await self.attacker.post(f"/api/v1/sessions/{self.sid}/jobs", body)
        job = submit.json() if submit.status == 202 else None
        out: dict[str, Any] = {"submit": submit, "job": job, "ended_s": None}
        if not isinstance(job, dict):
            return out
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            got = await self.attacker.get(f"/api/v1/jobs/{job['job_id']}")
            state = got.json()
            if isinstance(state, dict) and state.get("status") in (
                "succeeded",
                "failed",
                "cancelled",
            ):
                out.update(job=state, ended_s=time.perf_counter() - t0)
                break
            await asyncio.sleep(0.05)
        return out

    async def job_bombs(self) -> Outcome:
        """The unit bomb and the mesh bomb as jobs: each must end failed with a reason."""
        bodies: list[dict[str, Any]] = [
            {"command": "get_value", "twig": "period@binary", "unit": BOMB_UNIT},
            {"command": "run_compute", "ntriangles": 200_000},
        ]
        results: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.window
        while not results or (time.monotonic() < deadline and len(results) < 40):
            for body in bodies:
                results.append(await self._job(body))
        ends = []
        clear = True
        for r in results:
            job = r["job"]
            ended = r["ended_s"]
            if isinstance(job, dict) and ended is not None:
                clear &= job.get("status") == "failed" and bool(job.get("error"))
                ends.append(ended)
            else:
                clear &= r["submit"].refused
                ends.append(r["submit"].seconds)
        first = results[0]
        job = first["job"] if isinstance(first["job"], dict) else {}
        shown = Answer(
            first["submit"].status,
            orjson.dumps({"status": job.get("status"), "error": job.get("error")})
            if job
            else first["submit"].body,
            first["ended_s"] or first["submit"].seconds,
        )
        return Outcome(
            "jobs: get_value unit bomb, run_compute ntriangles=200000",
            shown,
            clear=clear,
            slowest=max(ends),
            repeats=len(results),
            extra={"second_error": str((results[1]["job"] or {}).get("error"))[:120]},
        )

    async def heavy_job(self, points: int = 20_000, run_for: float = 5.0) -> Outcome:
        """A legitimate-sized compute that does get through as a job and keeps a core busy
        until ``job_timeout``; it runs for ``run_for`` seconds here and is then cancelled.
        The check is on the cancel (and on everybody else's pings meanwhile)."""
        grid = [i / points for i in range(points)]
        add = await self.attacker.send(
            self.sid,
            "add_dataset",
            kind="lc",
            dataset="attack_lc",
            compute_times=grid,
            overwrite=True,
        )
        submit = await self.attacker.post(
            f"/api/v1/sessions/{self.sid}/jobs", {"command": "run_compute"}
        )
        job = submit.json() if submit.status == 202 else {}
        status = None
        cancel = Answer(0, b"not submitted", 0.0)
        if isinstance(job, dict) and job.get("job_id"):
            await asyncio.sleep(run_for)
            state = (await self.attacker.get(f"/api/v1/jobs/{job['job_id']}")).json() or {}
            status = state.get("status")
            cancel = await self.attacker.post(f"/api/v1/jobs/{job['job_id']}/cancel")
        await self.attacker.send(self.sid, "remove_dataset", dataset="attack_lc")
        ended = cancel.json() if cancel.status == 200 else {}
        shown = Answer(
            cancel.status,
            orjson.dumps({"status": ended.get("status"), "error": ended.get("error")})
            if isinstance(ended, dict) and ended
            else cancel.body,
            cancel.seconds,
        )
        return Outcome(
            f"job run_compute of a {points}-point light curve, cancelled after {run_for:g} s",
            shown,
            clear=cancel.status == 200 and (ended or {}).get("status") == "cancelled",
            slowest=cancel.seconds,
            extra={
                "add_dataset": add.status,
                "submit": submit.status,
                "status_before_cancel": status,
                "note": "accepted: a legitimate-sized compute runs until job_timeout (3600 s)",
            },
        )

    # connections and accounts

    async def connection_flood(
        self, count: int = 500, addresses: int = 50, one_address: int = 80, hold: float = 11.0
    ) -> Outcome:
        """``count`` connections that never finish their headers, spread over
        ``addresses`` loopback addresses, plus ``one_address`` from one more address
        (above the per-address cap); meanwhile the victim opens new connections."""
        writers: list[asyncio.StreamWriter] = []
        readers: list[tuple[str, asyncio.StreamReader]] = []
        sources = [f"127.0.0.{10 + i % addresses}" for i in range(count)]
        sources += ["127.0.0.200"] * one_address

        async def half_open(src: str) -> None:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.hub.port, local_addr=(src, 0)), 5
                )
            except (OSError, TimeoutError):
                return
            writer.write(b"POST /auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            writers.append(writer)
            readers.append((src, reader))

        fresh: list[Answer] = []
        t_open = time.perf_counter()
        try:
            for i in range(0, len(sources), 50):
                await asyncio.gather(*(half_open(s) for s in sources[i : i + 50]))
            opened_s = time.perf_counter() - t_open
            deadline = time.monotonic() + hold
            while time.monotonic() < deadline and len(fresh) < 100:
                # a new client, so a new connection, each time: the flood must not keep
                # newcomers out
                async with new_client(self.victim.token, source="127.0.0.2") as http:
                    fresh.append(
                        await call(
                            http,
                            "POST",
                            f"{self.hub.url}/send/{self.sids['victim']}",
                            PING_BODY,
                            timeout=10,
                        )
                    )
                await asyncio.sleep(0.1)
            answered = await asyncio.gather(*(_first_line(r) for _, r in readers))
        finally:
            for w in writers:
                w.close()
            for w in writers:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(w.wait_closed(), 1)
        per_ip = [a for (src, _), a in zip(readers, answered, strict=True) if src == "127.0.0.200"]
        spread = [a for (src, _), a in zip(readers, answered, strict=True) if src != "127.0.0.200"]
        first = fresh[0] if fresh else Answer(0, b"no request", 0.0)
        return Outcome(
            f"{count} half-open connections from {addresses} addresses + {one_address} from one",
            first,
            clear=bool(fresh) and all(a.status == 200 for a in fresh),
            slowest=max((a.seconds for a in fresh), default=0.0),
            repeats=len(fresh),
            extra={
                "opened": len(writers),
                "opened_s": round(opened_s, 3),
                "spread_answered_while_held": _count(spread),
                "one_address_answered": _count(per_ip),
                "note": "answer = the victim's requests on new connections during the flood",
            },
        )

    async def login_burst(self) -> Outcome:
        """Wrong passwords for the victim's account from 127.0.0.3 (30, six at a time),
        then the victim's own login from 127.0.0.2, which must succeed at once."""
        return await self._wrong_logins(["127.0.0.3"], attempts=30, parallel=6)

    async def login_spray(self) -> Outcome:
        """The same from 20 addresses at once (100 wrong logins, 20 at a time: each
        (account, address) pair gets its free failures, each costing an Argon2 check),
        with the owner's login from 127.0.0.2 half-way through."""
        sources = [f"127.0.0.{100 + i}" for i in range(20)]
        return await self._wrong_logins(sources, attempts=100, parallel=20, owner_during=True)

    async def _wrong_logins(
        self, sources: list[str], attempts: int, parallel: int, owner_during: bool = False
    ) -> Outcome:
        """``attempts`` wrong logins, ``parallel`` at a time, spread over ``sources``; the
        owner's own login from 127.0.0.2 after them, or (``owner_during``) in the middle."""
        wrong = orjson.dumps({"email": self.victim.email, "password": "not-the-password-1"})
        right = orjson.dumps({"email": self.victim.email, "password": self.victim.password})
        url = self.hub.url + "/auth/login"
        answers: list[Answer] = []
        clients = [new_client(source=src) for src in sources]
        owner = new_client(source="127.0.0.2")
        owner_login: asyncio.Task[Answer] | None = None
        try:
            for i in range(0, attempts, parallel):
                if owner_during and owner_login is None and i >= attempts // 2:
                    owner_login = asyncio.create_task(call(owner, "POST", url, right))
                batch = range(i, min(i + parallel, attempts))
                answers += await asyncio.gather(
                    *(call(clients[j % len(clients)], "POST", url, wrong) for j in batch)
                )
            if owner_login is None:
                owner_login = asyncio.create_task(call(owner, "POST", url, right))
            login = await owner_login
        finally:
            for http in [*clients, owner]:
                await http.close()
        statuses: dict[str, int] = {}
        for a in answers:
            statuses[str(a.status)] = statuses.get(str(a.status), 0) + 1
        where = sources[0] if len(sources) == 1 else f"{len(sources)} addresses"
        when = "meanwhile" if owner_during else "then"
        return Outcome(
            f"{attempts} wrong logins from {where}, {when} the owner's from 127.0.0.2",
            login,
            clear=login.status == 200 and all(a.status in (401, 429) for a in answers),
            slowest=max([login.seconds, *(a.seconds for a in answers)]),
            repeats=attempts + 1,
            extra={
                "burst_statuses": statuses,
                "burst_last": answers[-1].head() if answers else "",
                "burst_answer_max_s": round(max(a.seconds for a in answers), 3),
                "note": "answer = the owner's login from another address",
            },
        )


async def _first_line(reader: asyncio.StreamReader) -> bytes:
    """The hub's first answer line on a half-open connection: its status line, or what
    happened instead (``reset``: refused and closed unread; ``eof``; ``open``: no answer)."""
    try:
        line = await asyncio.wait_for(reader.readline(), 0.5)
    except TimeoutError:
        return b"open"
    except ConnectionResetError:
        return b"reset"
    except OSError:
        return b"error"
    return line or b"eof"


def _count(lines: list[bytes]) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in lines:
        key = line.split(b" ")[1].decode() if line.startswith(b"HTTP/") else line.decode()
        out[key] = out.get(key, 0) + 1
    return out


ORDER = [
    "unit_get_value",
    "unit_set_value",
    "unit_attach_parameters",
    "unit_bundle",
    "mesh_run_compute",
    "mesh_set_value",
    "mesh_columns",
    "visible_if",
    "duplicate_command",
    "job_bombs",
    "heavy_job",
    "slot_grab",
    "connection_flood",
    "login_burst",
    "login_spray",
]


# -- the run ----------------------------------------------------------------------------


async def ping_stats(pinger: Pinger, name: str, t0: float, t1: float) -> dict[str, Any]:
    rows = await pinger.window(name, t0, t1)
    st = percentiles([r[1] for r in rows])
    worst = max(rows, key=lambda r: r[1], default=None)
    return {
        "n": st.get("n", 0),
        "p50_ms": st.get("p50_ms"),
        "p99_ms": st.get("p99_ms"),
        "max_ms": st.get("max_ms"),
        "worst_at_s": None if worst is None else round(worst[0] - t0, 2),
        "failed": sum(1 for r in rows if r[2] != 200),
    }


def ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 2) if value is not None and base else None


def verdict(outcome: Outcome, pings: dict[str, dict[str, Any]]) -> str:
    misses = []
    if not outcome.clear:
        misses.append("unclear answer")
    if outcome.slowest > ANSWER_LIMIT:
        misses.append(f"answer {outcome.slowest:.1f} s")
    for name, st in pings.items():
        if st["failed"]:
            misses.append(f"{name} {st['failed']} pings failed")
        if st["p99_ms"] is None:
            misses.append(f"{name} no pings")
        elif st["p99_ms"] > PING_P99_LIMIT:
            misses.append(f"{name} p99 {st['p99_ms']:.0f} ms")
    return "ok" if not misses else "MISS: " + ", ".join(misses)


async def run(hub: HubProcess, args: Any) -> list[str]:
    attacker = await register(hub.url, f"mallory-{secrets.token_hex(3)}@example.org")
    victim = await register(hub.url, f"victor-{secrets.token_hex(3)}@example.org")
    pinger: Pinger | None = None
    try:
        try:
            sids = {"attacker": await attacker.start(), "attacker_other": await attacker.start()}
            sids["victim"] = await victim.start()
        except RuntimeError as e:
            raise HubDidNotStart(f"the run's sessions did not start: {e}") from None
        hub.note_descendants()
        # something of the victim's that must survive every attack
        await victim.send(sids["victim"], "set_value", twig="period@binary", value=1.2345)
        targets = {
            "victim": (victim.token, sids["victim"]),
            "other": (attacker.token, sids["attacker_other"]),
        }
        pinger = Pinger(hub.url, targets, args.interval)
        pinger.start()
        await asyncio.sleep(1.0)  # warm-up, not counted
        t0 = time.monotonic()
        await asyncio.sleep(args.idle)
        t1 = time.monotonic()
        idle = {name: await ping_stats(pinger, name, t0, t1) for name in targets}
        emit(BENCH, "idle", **{f"{n}_ping": st for n, st in idle.items()})

        attacks = Attacks(hub, attacker, victim, sids, args.window)
        only = args.only.split(",") if args.only else ORDER
        rows: list[dict[str, Any]] = []
        for name in only:
            await asyncio.sleep(args.settle)
            t_start = time.monotonic()
            cpu_before = cpu_seconds(hub.pid)
            try:
                outcome: Outcome = await getattr(attacks, name)()
            except Exception as exc:  # report, and go on with the next attack
                outcome = Outcome(
                    "(the benchmark failed)", Answer(0, repr(exc).encode(), 0), False, 0
                )
            t_end = time.monotonic()
            cpu_after = cpu_seconds(hub.pid)
            hub.note_descendants()
            pings = {n: await ping_stats(pinger, n, t_start, t_end) for n in targets}
            check = verdict(outcome, pings)
            if outcome.answer.status == 0 or outcome.slowest > REQUEST_TIMEOUT:
                # bound the damage of an attack that got through: a fresh attacked session
                await attacker.post(f"/dash/end-session/{sids['attacker']}")
                sids["attacker"] = await attacker.start()
            rows.append(
                emit(
                    BENCH,
                    name,
                    entry=outcome.entry,
                    status=outcome.answer.status,
                    answer=outcome.answer.head(),
                    answer_s=round(outcome.answer.seconds, 4),
                    slowest_s=round(outcome.slowest, 4),
                    repeats=outcome.repeats,
                    attack_s=round(t_end - t_start, 3),
                    victim_ping=pings["victim"],
                    other_ping=pings["other"],
                    victim_p50_ratio=ratio(pings["victim"]["p50_ms"], idle["victim"]["p50_ms"]),
                    victim_p99_ratio=ratio(pings["victim"]["p99_ms"], idle["victim"]["p99_ms"]),
                    check=check,
                    hub_cpu_s=round(cpu_after[0] - cpu_before[0], 2),
                    workers_cpu_s=round(
                        sum(t - cpu_before[1].get(pid, 0.0) for pid, t in cpu_after[1].items()),
                        2,
                    ),
                    **outcome.extra,
                )
            )
        await asyncio.sleep(args.settle)
        t0 = time.monotonic()
        await asyncio.sleep(args.idle)
        t1 = time.monotonic()
        idle_end = {name: await ping_stats(pinger, name, t0, t1) for name in targets}
        emit(BENCH, "idle_end", **{f"{n}_ping": st for n, st in idle_end.items()})
        pinger.stop()
        lost = await integrity(attacker, victim, sids)
        emit(BENCH, "integrity", **lost)
        return table(rows, idle, idle_end, lost)
    finally:
        if pinger is not None and pinger.proc.is_alive():
            pinger.stop()
        await attacker.http.close()
        await victim.http.close()


async def integrity(attacker: User, victim: User, sids: dict[str, str]) -> dict[str, Any]:
    """Nothing lost: the victim's value, every session of the run still running."""
    value = (await victim.send(sids["victim"], "get_value", twig="period@binary")).json()
    mine = (await attacker.get("/dash/sessions")).json() or {}
    theirs = (await victim.get("/dash/sessions")).json() or {}
    statuses = {
        role: (theirs if role == "victim" else mine).get(sid, {}).get("status")
        for role, sid in sids.items()
    }
    return {
        "victim_value_kept": isinstance(value, dict) and value.get("result") == 1.2345,
        "session_status": statuses,
        "attacker_sessions_listed": len(mine),
    }


def table(
    rows: list[dict[str, Any]],
    idle: dict[str, dict[str, Any]],
    idle_end: dict[str, dict[str, Any]],
    lost: dict[str, Any],
) -> list[str]:
    v, o = idle["victim"], idle["other"]
    lines = [
        f"idle baseline: victim ping p50/p99 {v['p50_ms']:.2f}/{v['p99_ms']:.2f} ms "
        f"(n={v['n']}), attacker's other session {o['p50_ms']:.2f}/{o['p99_ms']:.2f} ms; "
        f"idle again at the end: victim {idle_end['victim']['p50_ms']:.2f}/"
        f"{idle_end['victim']['p99_ms']:.2f} ms",
        "",
        f"{'attack':24s} {'status':>6s} {'answer':44s} {'slowest':>8s} "
        f"{'victim p50/p99 ms':>18s} {'x idle':>11s} {'other p99':>9s}  check",
    ]
    for r in rows:
        vp, op = r["victim_ping"], r["other_ping"]
        answer = " ".join(r["answer"].split())[:44]
        lines.append(
            f"{r['case']:24s} {r['status']:>6d} {answer:44s} {r['slowest_s']:>7.3f}s "
            f"{_ms(vp['p50_ms']):>8s}/{_ms(vp['p99_ms']):<9s} "
            f"{_x(r['victim_p50_ratio']):>5s}/{_x(r['victim_p99_ratio']):<5s} "
            f"{_ms(op['p99_ms']):>9s}  {r['check']}"
        )
    misses = sum(1 for r in rows if r["check"] != "ok")
    lines += [
        "",
        f"{len(rows) - misses} ok, {misses} MISS (limits: answer <= {ANSWER_LIMIT:g} s, "
        f"ping p99 <= {PING_P99_LIMIT:g} ms)",
        f"nothing lost: victim's value kept {lost['victim_value_kept']}, sessions "
        f"{lost['session_status']}",
    ]
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


async def main() -> int:
    # no --url: the point is a hub with default settings, started here
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help=f"comma-separated attacks of: {','.join(ORDER)}")
    p.add_argument("--spawner", default=None, help="a spawner other than the hub's default")
    p.add_argument("--window", type=float, default=3.0, help="seconds each attack repeats")
    p.add_argument("--idle", type=float, default=5.0, help="seconds of idle baseline")
    p.add_argument("--settle", type=float, default=1.0, help="pause between attacks")
    p.add_argument("--interval", type=float, default=0.02, help="ping interval")
    p.add_argument("--hub-log", default=None, help="keep a copy of the hub's log here")
    p.add_argument(
        "--hub-arg",
        action="append",
        default=[],
        help="an extra hub option (repeatable; the run is then no longer of default settings)",
    )
    args = p.parse_args()
    unknown = set(filter(None, args.only.split(","))) - set(ORDER)
    if unknown:
        p.error(f"unknown attacks: {sorted(unknown)}")
    emit(BENCH, "machine", **machine())
    try:
        with default_hub(args.spawner, args.hub_log, args.hub_arg) as hub:
            emit(
                BENCH,
                "config",
                spawner=args.spawner or "(default)",
                auth_mode="jwt",
                extra_hub_args=args.hub_arg,
            )
            lines = await run(hub, args)
    except HubDidNotStart as exc:
        print(exc, file=sys.stderr)
        return 1
    summary("attacks against a default hub (issue 13)", lines)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
