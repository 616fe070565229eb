"""LocalProcessSpawner: each worker is a subprocess of the hub in its own process group.

The worker reports its bound endpoints on a pipe the spawner hands it (``--ready-fd``),
so start-up needs no port guessing and no file polling, and a worker that dies before
it is ready is noticed at once (the pipe closes empty). Stopping escalates SIGINT ->
SIGTERM -> SIGKILL to the whole process group and reaps the child; re-adoption after
a hub restart checks pid *and* process start time, so a reused pid is never taken for
our worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import IO, Any

import psutil
from traitlets import Float, Integer

from phoebe_kernel_worker.protocol import endpoints_from_json
from phoebe_kernel_worker.worker import EXIT_NO_FREE_PORT

from .base import SpawnCapacityError, Spawner, SpawnError

CREATE_TIME_TOLERANCE = 0.05  # seconds; psutil rounds start times to clock ticks
LOG_TAIL_BYTES = 4096


class LocalProcessSpawner(Spawner):
    """Start workers as local processes (the default backend, ``spawner_class = "local"``)."""

    interrupt_timeout = Float(
        1.0, help="Seconds to wait after SIGINT before SIGTERM when stopping."
    ).tag(config=True)
    term_timeout = Float(5.0, help="Seconds to wait after SIGTERM before SIGKILL.").tag(config=True)
    kill_timeout = Float(5.0, help="Seconds to wait after SIGKILL for the process to go.").tag(
        config=True
    )
    exit_poll_interval = Float(
        0.05, help="How often to check an adopted (not our child) process for exit."
    ).tag(config=True)
    log_max_bytes = Integer(
        10 * 1024 * 1024, help="Worker log size above which the log file is truncated at start."
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.proc: asyncio.subprocess.Process | None = None
        self.pid: int | None = None
        self.create_time: float | None = None
        self.endpoints: dict[str, str] = {}
        self.exit_status: int | None = None

    # --- paths ----------------------------------------------------------------------

    @property
    def connection_file(self) -> Path:
        return Path(self.runtime_dir) / "connection.json"

    @property
    def log_path(self) -> Path:
        return Path(self.runtime_dir) / "worker.log"

    # --- start ----------------------------------------------------------------------

    async def start(self) -> dict[str, str]:
        if not self.runtime_dir:
            raise SpawnError("no runtime directory was assigned to this session")
        self._prepare_files()
        self.emit_progress(10, "Starting worker process")
        read_fd, write_fd = os.pipe()
        try:
            await self._spawn(write_fd)
        finally:
            os.close(write_fd)
        return await self._await_ready(self._read_all(read_fd))

    async def _await_ready(self, ready: Awaitable[bytes | None]) -> dict[str, str]:
        """The worker's endpoints from its readiness report (``ready``), or a SpawnError
        saying why it did not come (timeout, or its exit status and last log line).

        Shared by cold starts (a pipe) and forked workers (the fork server's socket).
        """
        try:
            report = await asyncio.wait_for(ready, self.start_timeout)
        except TimeoutError:
            await self.stop(now=True)
            raise SpawnError(
                f"worker did not become ready within {self.start_timeout:g} s"
            ) from None
        try:
            endpoints, _pid = endpoints_from_json(report or b"")
        except ValueError:
            status = await self._wait_exit(self.kill_timeout)
            await self.stop(now=True)
            if status == EXIT_NO_FREE_PORT:
                raise SpawnCapacityError(self._failure_reason(status)) from None
            raise SpawnError(self._failure_reason(status)) from None
        self.endpoints = endpoints
        self.endpoints["port"] = endpoints["shell"].rsplit(":", 1)[-1]
        self.emit_progress(100, "Worker ready", done=True)
        self.log.debug("worker %s for session %s ready: %s", self.pid, self.session_id, endpoints)
        return dict(self.endpoints)

    async def _spawn(self, write_fd: int) -> None:
        argv = [
            *self.cmd,
            *self.worker_args,
            "--connection-file",
            str(self.connection_file),
            "--ready-fd",
            str(write_fd),
        ]
        # the worker gets its own copy of the descriptor; the hub keeps none open
        with self._open_log() as log_file:
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=asyncio.subprocess.STDOUT,
                    pass_fds=(write_fd,),
                    start_new_session=True,
                    env=self.get_env(),
                    cwd=self.session_dir,
                )
            except OSError as e:
                raise SpawnError(
                    f"could not start worker command {self.cmd[0]!r}: {e.strerror}"
                ) from e
        self.pid = self.proc.pid
        try:
            ps = psutil.Process(self.pid)
            self.create_time = ps.create_time()
            for name, value in self.worker_rlimits().items():
                ps.rlimit(getattr(psutil, f"RLIMIT_{name}"), (value, value))
        except psutil.Error:
            pass  # it already died; the readiness pipe will tell
        self.emit_progress(30, f"Worker process {self.pid} started, loading PHOEBE")

    @staticmethod
    async def _read_all(fd: int) -> bytes:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        pipe = os.fdopen(fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        try:
            return await reader.read(1024 * 1024)
        finally:
            transport.close()

    def _prepare_files(self) -> None:
        """Private runtime dir, session dir and the 0600 connection file (local disk, fast)."""
        Path(self.runtime_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        Path(self.session_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.write_connection_file(str(self.connection_file))

    def _open_log(self) -> IO[bytes]:
        """The worker's log file, started afresh when it grew past ``log_max_bytes``."""
        with contextlib.suppress(FileNotFoundError):
            if self.log_path.stat().st_size > self.log_max_bytes:
                self.log_path.unlink()
        return open(self.log_path, "ab")  # the caller closes it

    def _failure_reason(self, status: int | None) -> str:
        tail = self.log_tail().strip().splitlines()
        last = tail[-1].strip() if tail else ""
        if status is None:
            what = "worker closed its readiness pipe without reporting endpoints"
        elif status < 0:
            what = f"worker was killed by {signal.Signals(-status).name} while starting"
        else:
            what = f"worker exited with status {status} while starting"
        return f"{what}: {last[:300]}" if last else what

    def log_tail(self, nbytes: int = LOG_TAIL_BYTES) -> str:
        """The end of the worker's log (for failure reasons and admins)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - nbytes))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # --- poll / stop ------------------------------------------------------------------

    async def poll(self) -> int | None:
        if self.proc is not None:
            return self.proc.returncode
        if self.pid is None:
            return self.exit_status if self.exit_status is not None else 0
        return None if self._adopted_alive() else self._adopted_status()

    def _adopted_alive(self) -> bool:
        try:
            ps = psutil.Process(self.pid)
            if self.create_time is not None and abs(ps.create_time() - self.create_time) > (
                CREATE_TIME_TOLERANCE
            ):
                return False  # the pid was reused by another process
            return ps.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def _adopted_status(self) -> int:
        if self.exit_status is None:
            self.exit_status = 1  # not our child: its real status is unknowable
        return self.exit_status

    async def stop(self, now: bool = False) -> None:
        if self.pid is None or await self.poll() is not None:
            self._sweep_group()
            self._finish()
            return
        steps = [(signal.SIGKILL, self.kill_timeout)]
        if not now:
            steps = [
                (signal.SIGINT, self.interrupt_timeout),
                (signal.SIGTERM, self.term_timeout),
                *steps,
            ]
        for sig, timeout in steps:
            self._signal_group(sig)
            if await self._wait_exit(timeout) is not None:
                break
        else:
            self.log.error("worker %s of session %s survived SIGKILL", self.pid, self.session_id)
        self._sweep_group()
        self._finish()

    def _signal_group(self, sig: int) -> None:
        assert self.pid is not None
        if self.proc is None and not self._adopted_alive():
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            self.log.warning("no permission to signal worker group %s", self.pid)

    def _sweep_group(self) -> None:
        """Kill what is left of the worker's process group (grandchildren)."""
        if self.pid is None or (self.proc is None and self.create_time is None):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    async def _wait_exit(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for the worker to exit; its status, or None if still up."""
        if self.proc is not None:
            try:
                return await asyncio.wait_for(asyncio.shield(self.proc.wait()), timeout)
            except TimeoutError:
                return None
        deadline = time.monotonic() + timeout
        while self._adopted_alive():
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(self.exit_poll_interval)
        return self._adopted_status()

    def _finish(self) -> None:
        if self.proc is not None and self.proc.returncode is not None:
            self.exit_status = self.proc.returncode
        if self.runtime_dir:
            self.connection_file.unlink(missing_ok=True)

    # --- state ------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.pid is not None:
            state.update(
                pid=self.pid,
                create_time=self.create_time,
                endpoints=self.endpoints,
                runtime_dir=self.runtime_dir,
            )
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        if "pid" in state:
            self.pid = int(state["pid"])
            ct = state.get("create_time")
            self.create_time = float(ct) if ct is not None else None
            self.endpoints = dict(state.get("endpoints") or {})
            self.runtime_dir = state.get("runtime_dir") or self.runtime_dir

    def clear_state(self) -> None:
        super().clear_state()
        if self.runtime_dir:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
        self.proc = None
        self.pid = None
        self.create_time = None
        self.exit_status = None
        self.endpoints = {}
