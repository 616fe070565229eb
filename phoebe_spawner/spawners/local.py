"""LocalProcessSpawner: each worker is a subprocess of the hub in its own process group.

The worker reports its bound endpoints on a pipe the spawner hands it (``--ready-fd``),
so start-up needs no port guessing and no file polling, and a worker that dies before
it is ready is noticed at once (the pipe closes empty). Stopping escalates SIGINT ->
SIGTERM -> SIGKILL to the whole process group and reaps the child; re-adoption after
a hub restart checks pid *and* process start time, so a reused pid is never taken for
our worker.

Death detection is an event (:meth:`LocalProcessSpawner.watch_exit`): a child's exit
completes ``proc.wait()``; an adopted worker (not our child) is watched through a pidfd
(``os.pidfd_open``) registered with the event loop, which becomes readable when the
process exits. Where pidfds are unavailable the session manager polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import psutil
from traitlets import Bool, Enum, Float, Integer, List, TraitError, Unicode, default, validate

from phoebe_kernel_worker.protocol import ConnectionInfo, endpoints_from_json
from phoebe_kernel_worker.protocol.exits import EXIT_NO_FREE_PORT
from phoebe_kernel_worker.protocol.landlock import landlock_abi

from ..channels import WorkerEndpoint
from . import wall
from .base import SpawnCapacityError, Spawner, SpawnError

CREATE_TIME_TOLERANCE = 0.05  # seconds; psutil rounds start times to clock ticks
LOG_TAIL_BYTES = 4096


class LocalProcessSpawner(Spawner):
    """Start workers as local processes, a cold start each (``spawner_class = "local"``;
    the default ``local-forkserver`` falls back to it)."""

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

    worker_uids = List(
        Integer(),
        default_value=[64000, 65000],
        minlen=0,
        maxlen=2,
        help="""[low, high): the uids (and same-numbered gids) workers run as when the hub
        runs as root, one per live worker, never shared; they need no account. Workers
        never run as root: a root hub with an empty range refuses to start them. The
        Python installation must be readable by these uids (a directory like /root on the
        way to it is bridged in a private mount namespace). Ignored when the hub is not
        root: workers then run as the hub's user, walled in by Landlock.""",
    ).tag(config=True)

    @validate("worker_uids")
    def _check_uid_range(self, proposal: Any) -> list[int]:
        uids = list(proposal["value"])
        if uids and (len(uids) != 2 or not 0 < uids[0] < uids[1]):
            raise TraitError(
                f"LocalProcessSpawner.worker_uids must be [low, high) with 0 < low < high "
                f"(or empty), not {uids}"
            )
        return uids

    landlock = Enum(
        ["auto", "required", "off"],
        default_value="auto",
        help="""Landlock around each worker: read-only system and Python paths, read-write
        only its session directory, TCP bind only on its own ports and no TCP connect
        (kernel ABI 4+), signals and abstract unix sockets scoped to itself (ABI 6+), no
        ptrace of other processes. 'auto' uses it when the kernel offers it (the hub logs
        which wall is active at start); 'required' makes workers refuse to start without
        it; 'off' leaves a worker that runs as the hub's user able to read the hub's data
        directory (never choose it with untrusted users).""",
    ).tag(config=True)

    seccomp = Bool(
        True,
        help="""A seccomp filter in each worker that refuses to create unix sockets (so a
        worker cannot reach its user's pathname sockets, which Landlock does not cover:
        the fork server's, a Docker or D-Bus socket) and refuses system calls of another
        architecture's ABI. Turn off only for a session factory that needs unix sockets.""",
    ).tag(config=True)

    wall_read_paths = List(
        Unicode(),
        help="""Extra paths workers may read under Landlock (e.g. a passband directory
        outside the Python installation). Added to the system directories, the Python
        prefixes, sys.path and the worker packages; the data directory is always left
        out.""",
    ).tag(config=True)

    wall_write_paths = List(
        Unicode(),
        help="""Extra paths workers may write under Landlock besides their session
        directory (shared by all workers: nothing private belongs there).""",
    ).tag(config=True)

    @default("cmd")
    def _default_cmd(self) -> list[str]:
        # -P: the session directory (the working directory) is never on sys.path
        return [sys.executable, "-P", "-m", "phoebe_kernel_worker"]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.uid: int | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.pid: int | None = None
        self.create_time: float | None = None
        self.exit_status: int | None = None
        #: cancels the exit watch (watch_exit), if one is set
        self._unwatch: Callable[[], None] | None = None

    # --- paths ----------------------------------------------------------------------

    @property
    def connection_file(self) -> Path:
        return Path(self.runtime_dir) / "connection.json"

    @property
    def log_path(self) -> Path:
        return Path(self.runtime_dir) / "worker.log"

    # --- the wall -------------------------------------------------------------------

    @classmethod
    async def start_backend(cls, parent: Any, runtime_dir: str) -> Any:
        cls(parent=parent).log_wall()
        return None

    def log_wall(self) -> None:
        """Say at hub start which wall workers will get, and why a layer is missing."""
        abi = landlock_abi()
        if self.landlock == "off":
            landlock = "Landlock off (LocalProcessSpawner.landlock)"
        elif abi:
            landlock = f"Landlock ABI {abi}" + ("" if abi >= 4 else " (no network rules)")
        else:
            landlock = "no Landlock (the kernel does not offer it)"
        if os.geteuid() == 0:
            if len(self.worker_uids) != 2 or self.worker_uids[0] >= self.worker_uids[1]:
                self.log.error("the hub runs as root and worker_uids is empty: no worker can start")
                return
            low, high = self.worker_uids
            who = f"a uid of {low}-{high - 1} each"
        else:
            who = f"the hub's uid {os.geteuid()}"
        seccomp = "seccomp (no unix sockets)" if self.seccomp else "no seccomp filter"
        self.log.info("worker wall: %s, no-new-privs, %s, %s", who, landlock, seccomp)
        if os.geteuid() != 0 and (not abi or self.landlock == "off"):
            self.log.warning(
                "workers run as the hub's user without Landlock: one that escapes the Python"
                " sandbox can read the data directory (run the hub as root, or on Linux 6.12+)"
            )
        if self.landlock == "required" and not abi:
            self.log.error("landlock = 'required' but the kernel has none: workers cannot start")

    def wall_policy(self) -> dict[str, Any]:
        """The wall this session's worker puts up (sent in its connection file)."""
        parent_dir = getattr(self.parent, "data_dir", None)
        data_dir = parent_dir or str(Path(self.runtime_dir).parent.parent)
        factories = wall.session_factories(self.worker_args)
        policy: dict[str, Any] = {
            "landlock": self.landlock,
            "seccomp": self.seccomp,
            "read": wall.read_paths(data_dir, self.wall_read_paths, factories),
            "write": list(self.wall_write_paths),
        }
        if self.uid is not None:
            policy.update(uid=self.uid, gid=self.uid)
        return policy

    def connection_info(self, *, session_dir: str | None = None, **kwargs: Any) -> ConnectionInfo:
        kwargs.setdefault("wall", self.wall_policy())
        return super().connection_info(session_dir=session_dir, **kwargs)

    def _take_uid(self) -> None:
        """Hold a worker uid when the hub is root (workers never run as root)."""
        if os.geteuid() != 0 or self.uid is not None:
            return
        if len(self.worker_uids) != 2 or self.worker_uids[0] >= self.worker_uids[1]:
            raise SpawnError(
                "the hub runs as root and worker_uids is empty: workers never run as root"
            )
        try:
            self.uid = self._uid_pool().allocate()
        except LookupError as e:
            raise SpawnCapacityError(str(e)) from None

    async def _hold_uid(self) -> None:
        """:meth:`_take_uid` off the event loop (it scans the process table)."""
        if os.geteuid() == 0 and self.uid is None:
            await asyncio.to_thread(self._take_uid)

    @property
    def max_workers(self) -> int | None:
        """A root hub's workers each hold one of :attr:`worker_uids`: no more run at once."""
        if os.geteuid() != 0 or len(self.worker_uids) != 2:
            return None
        return max(0, self.worker_uids[1] - self.worker_uids[0])

    def _uid_pool(self) -> wall.UidPool:
        low, high = self.worker_uids
        return wall.UidPool(low, high)

    def _release_uid(self) -> None:
        """Give the worker's uid back: on the pool's release thread when a loop runs (it
        scans the process table for what still runs as that uid, one scan for every
        uid ended meanwhile), else here and now (shutdown, tests)."""
        if self.uid is not None and len(self.worker_uids) == 2:
            pool = self._uid_pool()
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pool.release(self.uid)
            else:
                pool.release_later(self.uid)
        self.uid = None

    # --- start ----------------------------------------------------------------------

    async def start(self) -> WorkerEndpoint:
        if not self.runtime_dir:
            raise SpawnError("no runtime directory was assigned to this session")
        await self._hold_uid()
        self._prepare_files()
        self.emit_progress(10, "Starting worker process")
        read_fd, write_fd = os.pipe()
        try:
            await self._spawn(write_fd)
        finally:
            os.close(write_fd)
        return await self._await_ready(self._read_all(read_fd))

    async def _await_ready(self, ready: Awaitable[bytes | None]) -> WorkerEndpoint:
        """The worker's endpoint from its readiness report (``ready``), or a SpawnError
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
        self.emit_progress(100, "Worker ready", done=True)
        self.log.debug("worker %s for session %s ready: %s", self.pid, self.session_id, endpoints)
        return WorkerEndpoint(**endpoints)

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
        self._take_uid()
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

    def watch_exit(self, callback: Callable[[int | None], None]) -> Callable[[], None] | None:
        """``callback(status)`` when the worker exits: our child's exit completes
        ``proc.wait()``; an adopted worker is watched through a pidfd on the event loop.
        None (poll me) without a worker or when the kernel has no pidfds."""
        cancel: Callable[[], None] | None
        if self.proc is not None:
            cancel = self._watch_child(self.proc, callback)
        elif self.pid is not None:
            cancel = self._watch_pidfd(self.pid, callback)
        else:
            return None
        self._unwatch = cancel
        return cancel

    @staticmethod
    def _watch_child(
        proc: asyncio.subprocess.Process, callback: Callable[[int | None], None]
    ) -> Callable[[], None]:
        """Call ``callback`` with our child's exit status once ``proc.wait()`` returns."""
        waiter = asyncio.ensure_future(proc.wait())

        def exited(done: asyncio.Future[int]) -> None:
            if not done.cancelled() and done.exception() is None:
                callback(done.result())

        def cancel() -> None:
            waiter.cancel()

        waiter.add_done_callback(exited)
        return cancel

    def _watch_pidfd(
        self, pid: int, callback: Callable[[int | None], None]
    ) -> Callable[[], None] | None:
        """Watch a process that is not our child through a pidfd on the loop's selector;
        None when pidfds are unavailable (old kernel, no ``os.pidfd_open``)."""
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(pid)
        except OSError as e:
            if e.errno != errno.ESRCH:
                self.log.debug("no pidfd for worker %s (%s): it is polled", pid, e)
                return None
            fd = -1  # already gone
        except AttributeError:  # not Linux
            return None
        if fd >= 0 and self._adopted_alive():  # checked after opening: the pid is ours
            watching = True

            def readable() -> None:
                nonlocal watching
                if watching:
                    cancel()
                    callback(self._adopted_status())

            def cancel() -> None:
                nonlocal watching
                if watching:
                    watching = False
                    loop.remove_reader(fd)
                    os.close(fd)

            try:
                loop.add_reader(fd, readable)
            except (OSError, NotImplementedError, ValueError) as e:
                os.close(fd)
                self.log.debug("cannot watch the pidfd of worker %s (%s): it is polled", pid, e)
                return None
            return cancel
        if fd >= 0:
            os.close(fd)
        handle = loop.call_soon(lambda: callback(self._adopted_status()))
        return handle.cancel

    def _stop_watching(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None

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
        if self.exit_status is not None or self.pid is None:
            self._release_uid()  # the worker is gone: its uid may serve another
        if self.runtime_dir:
            self.connection_file.unlink(missing_ok=True)

    # --- state ------------------------------------------------------------------------

    def local_pid(self) -> int | None:
        """The worker's process id (a process of the hub's machine)."""
        return self.pid

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.pid is not None:
            state.update(
                pid=self.pid,
                create_time=self.create_time,
                runtime_dir=self.runtime_dir,
            )
            if self.uid is not None:
                state["uid"] = self.uid
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        if "pid" in state:
            self.pid = int(state["pid"])
            ct = state.get("create_time")
            self.create_time = float(ct) if ct is not None else None
            self.runtime_dir = state.get("runtime_dir") or self.runtime_dir
            if isinstance(state.get("uid"), int) and len(self.worker_uids) == 2:
                self.uid = state["uid"]
                if not self._uid_pool().claim(self.uid):
                    self.log.warning(
                        "session %s: worker uid %d is held by another hub",
                        self.session_id,
                        self.uid,
                    )

    def clear_state(self) -> None:
        super().clear_state()
        self._stop_watching()
        if self.runtime_dir:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
        self._release_uid()
        self.proc = None
        self.pid = None
        self.create_time = None
        self.exit_status = None
