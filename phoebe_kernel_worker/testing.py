"""A light command session for testing hub lifecycles without PHOEBE.

Selected with ``--session-factory phoebe_kernel_worker.testing:test_session``. It
starts in milliseconds and can misbehave on purpose (slow start, failing start,
commands that sleep, crash, hang in C code or allocate memory), so the hub's
timeouts, interrupts and death handling are tested against a real worker process.
Behaviour at start is chosen through the connection file's ``extra`` dict, which only
the hub's configuration can set.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import random as _random
import signal
import socket
import time
from collections.abc import Callable
from typing import Any, ClassVar

from .progress import ProgressBar
from .protocol import ConnectionInfo

PTRACE_ATTACH = 16
PTRACE_DETACH = 17


class TestSession:
    """Commands: ping, echo, arrays, set/get (a dict), sleep, steps, crash, hang, allocate,
    env, whereami, touch, write, random, probe_wall."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self._blobs: list[bytearray] = []

    def dispatch(self, command: str, kwargs: dict[str, Any]) -> Any:
        handler = self.COMMANDS.get(command)
        if handler is None:
            raise ValueError(f"API does not recognize command {command}.")
        return handler(self, **kwargs)

    def ping(self) -> dict[str, str]:
        return {"status": "ready"}

    def echo(self, **kwargs: Any) -> dict[str, Any]:
        return kwargs

    def arrays(self, **kwargs: Any) -> dict[str, Any]:
        """What each argument is as the command receives it: its type, and for a numpy
        array its dtype, shape, the SHA-256 of its bytes (to compare bit for bit),
        whether it is writeable and whether it views memory it does not own (a buffer
        frame, not a copy)."""
        out: dict[str, Any] = {}
        for name, value in kwargs.items():
            entry: dict[str, Any] = {"type": type(value).__name__}
            if hasattr(value, "dtype") and hasattr(value, "tobytes"):
                entry.update(
                    dtype=value.dtype.str,
                    shape=list(value.shape),
                    sha256=hashlib.sha256(value.tobytes()).hexdigest(),
                    writeable=bool(value.flags.writeable),
                    view=value.base is not None,
                )
            out[name] = entry
        return out

    def set_value(self, twig: str, value: Any) -> dict[str, Any]:
        self.values[twig] = value
        return {}

    def get_value(self, twig: str) -> Any:
        if twig not in self.values:
            raise ValueError(f"no parameter {twig!r}")
        return self.values[twig]

    def get_bundle(self) -> dict[str, str]:
        """The values as a 'bundle' string, like PHOEBE's get_bundle; the value named
        ``fail_get_bundle`` makes it fail (to test what a failed checkpoint does)."""
        if self.values.get("fail_get_bundle"):
            raise RuntimeError("get_bundle failed on purpose")
        return {"bundle": json.dumps(self.values, sort_keys=True)}

    def load_bundle(self, bundle: str) -> dict[str, Any]:
        self.values = dict(json.loads(bundle))
        return {}

    def sleep(self, seconds: float = 1.0) -> dict[str, float]:
        """Sleep in small Python steps, so an interrupt lands promptly."""
        end = time.monotonic() + float(seconds)
        while time.monotonic() < end:
            time.sleep(0.01)
        return {"slept": float(seconds)}

    def steps(self, n: int = 10, delay: float = 0.05, fail: bool = False) -> dict[str, int]:
        """Report progress through the same progress bars PHOEBE's backends use, and print
        one line per step; ``fail`` raises at the end."""
        for i in ProgressBar(range(int(n)), desc="stepping"):
            print(f"step {i + 1} of {n}", flush=True)
            end = time.monotonic() + float(delay)
            while time.monotonic() < end:
                time.sleep(0.005)
        if fail:
            raise RuntimeError(f"failed after {n} steps")
        return {"steps": int(n)}

    def crash(self, status: int = 3) -> None:
        os._exit(int(status))

    def hang(self) -> None:
        """Block in C for ever, as a C loop that never checks for signals does: only
        TERM or KILL end this (a 'hung' worker).

        SIGINT is blocked in this thread, and the wait never returns to the bytecode
        loop, so neither a signal handled by another thread nor an interrupt flag set
        meanwhile can raise KeyboardInterrupt here.
        """
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGUSR2})
        while True:
            signal.sigwait({signal.SIGUSR2})  # a signal nothing sends

    def allocate(self, mib: int) -> dict[str, int]:
        for _ in range(int(mib)):
            self._blobs.append(bytearray(os.urandom(1)) * (1024 * 1024))
        return {"allocated_mib": len(self._blobs)}

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def whereami(self) -> dict[str, Any]:
        """The working directory, its files and the process's ids (isolation tests)."""
        return {
            "cwd": os.getcwd(),
            "files": sorted(os.listdir(".")),
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "pgid": os.getpgid(0),
            "sid": os.getsid(0),
        }

    def touch(self, name: str) -> dict[str, str]:
        """Create a file in the working directory (isolation tests)."""
        with open(os.path.basename(name), "w") as f:
            f.write("x")
        return {}

    def write(self, name: str, kib: int) -> dict[str, int]:
        """Write a file of ``kib`` KiB in the working directory (disk limit tests)."""
        with open(os.path.basename(name), "wb") as f:
            for _ in range(int(kib)):
                f.write(b"x" * 1024)
        return {"written_kib": int(kib)}

    def random(self) -> dict[str, float]:
        """One draw of Python's and numpy's global generators (fork reseeding tests)."""
        import numpy

        draw = _random.random()  # noqa: S311 - testing the reseeding, not for secrets
        return {"random": draw, "numpy": float(numpy.random.random())}

    def probe_wall(
        self,
        read: list[str] | tuple[()] = (),
        list_dir: list[str] | tuple[()] = (),
        write_in: list[str] | tuple[()] = (),
        ptrace: list[int] | tuple[()] = (),
        signal_pids: list[int] | tuple[()] = (),
        connect: list[list[Any]] | tuple[()] = (),
        unix: list[str] | tuple[()] = (),
    ) -> dict[str, dict[str, Any]]:
        """Try what a worker that escaped PHOEBE's sandbox would (the wall tests): read
        files, list and write directories, ptrace and signal processes, connect and send
        to TCP addresses (``[host, port]``) and unix sockets. Each result is
        ``{"ok": bool, "errno": name or None, ...}``, straight from the system calls."""
        results: dict[str, dict[str, Any]] = {}
        for path in read:
            results[f"read {path}"] = _attempt(_read_one, path)
        for path in list_dir:
            results[f"list {path}"] = _attempt(_count_entries, path)
        for path in write_in:
            results[f"write {path}"] = _attempt(_write_in, path)
        for pid in ptrace:
            results[f"ptrace {pid}"] = _attempt(_ptrace_attach, int(pid))
        for pid in signal_pids:
            results[f"signal {pid}"] = _attempt(os.kill, int(pid), signal.SIGCONT)
        for host, port in connect:
            results[f"connect {host}:{port}"] = _attempt(_send, host, int(port))
        for path in unix:
            results[f"unix {path}"] = _attempt(_send_unix, path)
        return results

    COMMANDS: ClassVar[dict[str, Callable[..., Any]]] = {
        "ping": ping,
        "echo": echo,
        "arrays": arrays,
        "set_value": set_value,
        "get_value": get_value,
        "sleep": sleep,
        "steps": steps,
        "get_bundle": get_bundle,
        "load_bundle": load_bundle,
        "crash": crash,
        "hang": hang,
        "allocate": allocate,
        "env": env,
        "whereami": whereami,
        "touch": touch,
        "write": write,
        "random": random,
        "probe_wall": probe_wall,
    }


def _attempt(action: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """Run one probe; the kernel's answer (errno) when it refused."""
    try:
        value = action(*args)
    except OSError as e:
        return {"ok": False, "errno": errno.errorcode.get(e.errno or 0, str(e.errno))}
    return {"ok": True, "errno": None, "value": value}


def _read_one(path: str) -> int:
    with open(path, "rb", buffering=0) as f:
        return len(f.read(64))


def _count_entries(path: str) -> int:
    return len(os.listdir(path))


def _write_in(directory: str) -> int:
    fd = os.open(os.path.join(directory, "probe-wall"), os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    return 1


def _ptrace_attach(pid: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(PTRACE_ATTACH, pid, None, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    libc.ptrace(PTRACE_DETACH, pid, None, None)
    return pid


def _send(host: str, port: int) -> int:
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        return sock.send(b"\x01probe")


def _send_unix(path: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        with contextlib.suppress(BrokenPipeError):  # a server that refused us at once
            sock.sendall(b'{"connection_file": "/dev/null"}\n')
        return sock.recv(4096).decode("utf-8", "replace")


def test_session(info: ConnectionInfo) -> TestSession:
    """Factory: honours ``extra.start_delay`` (seconds) and ``extra.fail_start`` (message)."""
    delay = float(info.extra.get("start_delay", 0))
    if delay:
        time.sleep(delay)
    if info.extra.get("fail_start"):
        raise SystemExit(f"test worker refused to start: {info.extra['fail_start']}")
    return TestSession()


test_session.__test__ = False  # type: ignore[attr-defined]
