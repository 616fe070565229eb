"""ForkServerSpawner: local workers forked from a template that has PHOEBE loaded.

``spawner_class = "local-forkserver"``. The hub owns one fork server
(:mod:`phoebe_kernel_worker.forkserver`), started by :meth:`ForkServerSpawner.start_backend`
when the session manager starts and stopped when it shuts down. Each session's spawner
writes the usual 0600 connection file and asks the fork server, over its private unix
socket, to fork a worker that reads it; the worker is ready in milliseconds instead of
seconds and shares the template's memory copy-on-write.

The hub is not the worker's parent, so bookkeeping goes through the fork server's
connection: it reports the child's pid at once and its exit status when it is reaped;
``poll`` answers from that, and ``watch_exit`` tells the session manager as soon as the
report arrives. Stopping signals the worker's own process group, exactly like
:class:`~phoebe_spawner.spawners.local.LocalProcessSpawner`. Without that connection
(re-adopted after a hub restart, or the fork server died) the worker is watched by pid
*and* process start time, like any adopted local worker.

This is the default backend. When the fork server is not available (its template failed
to start, e.g. PHOEBE does not import or forking is impossible, or it died) a session is
cold-started like a ``local`` worker: the failure is one warning in the hub log saying
why, each cold start then one INFO line (a fork request that fails on its own, e.g. a
timeout, is a warning of its own); a dead fork server is restarted on a later start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import orjson
import psutil
from traitlets import Float, Integer, List, Unicode, default

from ..channels import WorkerEndpoint
from .base import THREAD_VARS, SpawnError
from .local import LocalProcessSpawner

#: longest unix socket path we try to use (the kernel's limit is 107 bytes)
MAX_SOCKET_PATH = 100


class ForkServerUnavailable(Exception):
    """The fork server cannot fork a worker now (not started, failed, or dead).

    ``reported`` is True when the hub log already said why (the template failed or died):
    the spawner then mentions its cold start at INFO instead of warning again.
    """

    def __init__(self, reason: str, *, reported: bool = False) -> None:
        super().__init__(reason)
        self.reported = reported


class ForkedChild:
    """The hub's end of one forked worker's connection to the fork server.

    Created by :meth:`ForkServer.fork`. A reader task takes the worker's readiness report
    (:meth:`read_ready`) and then the exit report the fork server sends when it reaps
    the worker (:attr:`exit_status`, :attr:`exited`). ``spare`` says whether the worker
    was one of the fork server's spares (forked ahead, see ``ForkServerSpawner.prefork``).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pid: int,
        *,
        spare: bool = False,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.pid = pid
        self.spare = spare
        self.exit_status: int | None = None
        #: the connection ended without an exit report (the fork server died)
        self.lost = False
        self.exited = asyncio.Event()
        self._ready: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._read(), name=f"forked-{pid}")

    async def read_ready(self) -> bytes | None:
        """The worker's readiness report, or None if it exited (or was lost) first."""
        return await asyncio.shield(self._ready)

    async def _read(self) -> None:
        line = b""
        try:
            line = await self.reader.readline()
            if line and b'"endpoints"' in line:
                self._ready.set_result(line)
                line = await self.reader.readline()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            line = b""
        finally:
            if not self._ready.done():
                self._ready.set_result(None)
        self._take_exit(line)

    def _take_exit(self, line: bytes) -> None:
        try:
            report = orjson.loads(line) if line else None
        except orjson.JSONDecodeError:
            report = None
        if isinstance(report, dict) and isinstance(report.get("exit"), int):
            self.exit_status = report["exit"]
        else:
            self.lost = True
        self.exited.set()
        self.writer.close()

    def abandon(self) -> None:
        """Stop listening for reports (the spawner forgot the worker)."""
        self._task.cancel()
        self.writer.close()


class ForkServer:
    """One hub's fork server process: started, watched, asked to fork, stopped.

    Built by :meth:`ForkServerSpawner.start_backend`; the spawners call :meth:`fork`.
    """

    def __init__(
        self,
        cmd: list[str],
        env: dict[str, str],
        runtime_dir: str,
        start_timeout: float,
        log: Any,
        restart_interval: float = 30.0,
    ) -> None:
        self.cmd = cmd
        self.env = env
        self.runtime_dir = Path(runtime_dir)
        self.start_timeout = start_timeout
        self.log = log
        self.restart_interval = restart_interval
        self.proc: asyncio.subprocess.Process | None = None
        self.socket_path = ""
        self.error: str | None = None
        self._ready: asyncio.Future[None] | None = None
        self._started_at = 0.0
        self._tmpdir: str | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def log_path(self) -> Path:
        return self.runtime_dir / "forkserver.log"

    def _open_log(self) -> IO[bytes]:
        return open(self.log_path, "ab")  # local disk; the caller closes it

    def start(self) -> None:
        """Start the template in the background; :meth:`fork` waits until it is ready."""
        self._started_at = time.monotonic()
        self.error = None
        self._ready = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._run(self._ready), name="forkserver")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _choose_socket(self) -> str:
        path = self.runtime_dir / "forkserver.sock"
        if len(str(path)) <= MAX_SOCKET_PATH:
            return str(path)
        self._tmpdir = self._tmpdir or tempfile.mkdtemp(prefix="phoebe-fs-")  # 0700
        return os.path.join(self._tmpdir, "forkserver.sock")

    async def _run(self, ready: asyncio.Future[None]) -> None:
        try:
            self.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.socket_path = self._choose_socket()
            read_fd, write_fd = os.pipe()
        except OSError as e:
            self._failed(ready, f"could not prepare the fork server: {e}")
            return
        try:
            with self._open_log() as log_file:
                self.proc = await asyncio.create_subprocess_exec(
                    *self.cmd,
                    "--socket",
                    self.socket_path,
                    "--ready-fd",
                    str(write_fd),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=asyncio.subprocess.STDOUT,
                    pass_fds=(write_fd,),
                    start_new_session=True,
                    env=self.env,
                )
        except OSError as e:
            os.close(read_fd)
            self._failed(ready, f"could not start the fork server: {e.strerror}")
            return
        finally:
            os.close(write_fd)
        try:
            report = await asyncio.wait_for(
                LocalProcessSpawner._read_all(read_fd), self.start_timeout
            )
        except TimeoutError:
            report = b""
        if not report:
            await self._kill()
            self._failed(ready, f"the fork server did not start: {self._log_tail()}")
            return
        self.log.info("fork server %s ready on %s", self.proc.pid, self.socket_path)
        ready.set_result(None)
        status = await self.proc.wait()
        if not self._closing:
            self.error = f"the fork server exited with status {status}"
            self.log.error("%s; new sessions cold-start until it is restarted", self.error)

    def _failed(self, ready: asyncio.Future[None], reason: str) -> None:
        """The template could not start: the one warning that says sessions start cold
        and why (each cold start is then logged at INFO)."""
        self.error = reason
        self.log.warning("%s; sessions will cold-start (as with spawner 'local')", reason)
        if not ready.done():
            ready.set_exception(ForkServerUnavailable(reason, reported=True))
            ready.exception()  # retrieved: nobody may be waiting yet

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text("utf-8", "replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1][:300] if lines else "no log"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and self.error is None

    @property
    def ready(self) -> bool:
        """Whether the template is loaded and forks at once (not starting, failed or dead)."""
        return self._ready is not None and self._ready.done() and self.alive

    async def fork(self, request: dict[str, Any], timeout: float) -> ForkedChild:
        """Ask for one worker; returns once the fork server reported the child's pid."""
        if self._ready is None or self._closing:
            raise ForkServerUnavailable("the fork server is not running")
        if self._ready.done() and not self.alive:
            self._maybe_restart()
            raise ForkServerUnavailable(
                self.error or "the fork server is not running", reported=self.error is not None
            )
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            raise ForkServerUnavailable("the fork server is still starting") from None
        try:
            reader, writer = await asyncio.open_unix_connection(self.socket_path)
        except OSError as e:
            raise ForkServerUnavailable(f"cannot reach the fork server: {e}") from None
        try:
            writer.write(orjson.dumps(request) + b"\n")
            line = await asyncio.wait_for(reader.readline(), timeout)
            reply = orjson.loads(line) if line else {}
        except TimeoutError:
            writer.close()
            raise ForkServerUnavailable(
                f"the fork server did not answer within {timeout:g} s"
            ) from None
        except (OSError, orjson.JSONDecodeError) as e:
            writer.close()
            raise ForkServerUnavailable(f"the fork server did not answer: {e}") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("pid"), int):
            writer.close()
            reason = reply.get("error") if isinstance(reply, dict) else None
            raise ForkServerUnavailable(str(reason or "the fork server refused the request"))
        return ForkedChild(reader, writer, reply["pid"], spare=reply.get("spare") is True)

    def _maybe_restart(self) -> None:
        if self._closing or time.monotonic() - self._started_at < self.restart_interval:
            return
        self.log.info("restarting the fork server")
        self.start()

    async def _kill(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        """Stop the fork server (its children were stopped by their sessions before)."""
        self._closing = True
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                await self._kill()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)


class ForkServerSpawner(LocalProcessSpawner):
    """Local workers forked from the hub's fork server; cold-started when it is unavailable."""

    #: the local worker's (7) and its connection to the fork server
    hub_fds_per_session = 8

    forkserver_cmd = List(
        Unicode(),
        help="""The command that starts the fork server; the spawner appends ``--prefork``,
        ``worker_args`` (e.g. ``--session-factory``), ``--socket`` and ``--ready-fd``.""",
    ).tag(config=True)

    @default("forkserver_cmd")
    def _default_forkserver_cmd(self) -> list[str]:
        return [sys.executable, "-P", "-m", "phoebe_kernel_worker.forkserver"]

    template_threads = Unicode(
        "1",
        help="""Threads of the template's BLAS/OpenMP pools (OMP_NUM_THREADS and friends), which
        every forked worker keeps: the template must have no threads when it forks.""",
    ).tag(config=True)

    fork_timeout = Float(
        10.0, help="Seconds to wait for the fork server (starting or busy) before a cold start."
    ).tag(config=True)

    prefork = Integer(
        4,
        min=0,
        help="""Spare workers the fork server keeps forked ahead, so that a burst of starts
        does not wait for one fork after another: a start takes a waiting spare and the
        fork server forks a new one once no request is waiting. Each spare has done only
        what no request decides (its own session, the template's descriptors closed); the
        wall, uid, environment, limits and random seed are still set per request. A spare
        costs about the private memory of a freshly forked worker. 0: fork each worker
        on demand.""",
    ).tag(config=True)

    @classmethod
    async def start_backend(cls, parent: Any, runtime_dir: str) -> ForkServer:
        proto = cls(parent=parent)
        proto.log_wall()
        env = proto.get_env()
        for var in THREAD_VARS:
            env[var] = proto.template_threads
        server = ForkServer(
            [*proto.forkserver_cmd, "--prefork", str(proto.prefork), *proto.worker_args],
            env,
            str(Path(runtime_dir) / "forkserver"),
            start_timeout=proto.start_timeout,
            log=proto.log,
        )
        server.start()
        return server

    @classmethod
    async def stop_backend(cls, backend: Any) -> None:
        if isinstance(backend, ForkServer):
            await backend.stop()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.child: ForkedChild | None = None

    async def start(self) -> WorkerEndpoint:
        server = self.backend
        if not isinstance(server, ForkServer):
            self.log.warning("no fork server: cold-starting session %s", self.session_id)
            return await super().start()
        if not self.runtime_dir:
            raise SpawnError("no runtime directory was assigned to this session")
        await self._hold_uid()
        self._prepare_files()
        self._open_log().close()  # starts the log afresh if it grew too large
        self.emit_progress(10, "Forking a worker")
        request = {
            "connection_file": str(self.connection_file),
            "log_file": str(self.log_path),
            "env": self.get_env(),
            "rlimits": self.worker_rlimits(),
        }
        try:
            self.child = await server.fork(request, timeout=self.fork_timeout)
        except ForkServerUnavailable as e:
            level = logging.INFO if e.reported else logging.WARNING
            self.log.log(
                level, "fork server unavailable (%s): cold-starting session %s", e, self.session_id
            )
            return await super().start()
        self.pid = self.child.pid
        with contextlib.suppress(psutil.Error):
            self.create_time = psutil.Process(self.pid).create_time()
        self.emit_progress(30, f"Worker process {self.pid} forked")
        return await self._await_ready(self.child.read_ready())

    async def poll(self) -> int | None:
        child = self.child
        if child is not None and not child.lost:
            if child.exit_status is not None:
                self.exit_status = child.exit_status
            return child.exit_status
        return await super().poll()

    def watch_exit(self, callback: Callable[[int | None], None]) -> Callable[[], None] | None:
        """``callback(status)`` when the fork server reports the worker's exit; if its
        connection breaks first (the fork server died), the worker is watched by pidfd
        like an adopted local one. Without that connection: as a local worker."""
        child = self.child
        if child is None or child.lost:
            return super().watch_exit(callback)
        fallback: Callable[[], None] | None = None
        waiter = asyncio.ensure_future(child.exited.wait())

        def exited(done: asyncio.Future[Any]) -> None:
            nonlocal fallback
            if done.cancelled():
                return
            if not child.lost:
                self.exit_status = child.exit_status
                callback(child.exit_status)
                return
            fallback = LocalProcessSpawner.watch_exit(self, callback)
            if fallback is None:
                callback(None)  # lost sight of it: the manager polls

        def cancel() -> None:
            waiter.cancel()
            if fallback is not None:
                fallback()

        waiter.add_done_callback(exited)
        self._unwatch = cancel
        return cancel

    async def _wait_exit(self, timeout: float) -> int | None:
        child = self.child
        if child is None or child.lost:
            return await super()._wait_exit(timeout)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(child.exited.wait(), timeout)
        if child.lost:
            return await super()._wait_exit(0)
        return child.exit_status

    def _finish(self) -> None:
        if self.child is not None and self.child.exit_status is not None:
            self.exit_status = self.child.exit_status
        super()._finish()

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.child is not None:
            state["forked"] = True
        return state

    def clear_state(self) -> None:
        if self.child is not None:
            self.child.abandon()
        self.child = None
        super().clear_state()
