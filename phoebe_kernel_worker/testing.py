"""A light command session for testing hub lifecycles without PHOEBE.

Selected with ``--session-factory phoebe_kernel_worker.testing:test_session``. It
starts in milliseconds and can misbehave on purpose (slow start, failing start,
commands that sleep, crash, hang in C code or allocate memory), so the hub's
timeouts, interrupts and death handling are tested against a real worker process.
Behaviour at start is chosen through the connection file's ``extra`` dict, which only
the hub's configuration can set.
"""

from __future__ import annotations

import json
import os
import random as _random
import signal
import time
from collections.abc import Callable
from typing import Any, ClassVar

from .progress import ProgressBar
from .protocol import ConnectionInfo


class TestSession:
    """Commands: ping, echo, set/get (a dict), sleep, steps, crash, hang, allocate, env,
    whereami, touch, write, random."""

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

    COMMANDS: ClassVar[dict[str, Callable[..., Any]]] = {
        "ping": ping,
        "echo": echo,
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
    }


def test_session(info: ConnectionInfo) -> TestSession:
    """Factory: honours ``extra.start_delay`` (seconds) and ``extra.fail_start`` (message)."""
    delay = float(info.extra.get("start_delay", 0))
    if delay:
        time.sleep(delay)
    if info.extra.get("fail_start"):
        raise SystemExit(f"test worker refused to start: {info.extra['fail_start']}")
    return TestSession()


test_session.__test__ = False  # type: ignore[attr-defined]
