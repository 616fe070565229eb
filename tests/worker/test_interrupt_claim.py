"""The worker's interrupt bookkeeping, in process: an interrupt can never be lost.

An interrupt for a command either finds it running (and signals it) or is remembered
until the command is claimed, in one step under the worker's lock. Before that was one
step, an interrupt that fell between "was it interrupted early?" and "it is running now"
was dropped, and a job cancel waited for the whole grace period (seen in CI as a 15 s
cancel). These tests drive the real KernelWorker methods without its sockets' peers.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import orjson
import pytest

from phoebe_kernel_worker.protocol import ConnectionInfo, Signer
from phoebe_kernel_worker.testing import TestSession
from phoebe_kernel_worker.worker import KernelWorker


@pytest.fixture
def worker(tmp_path) -> Iterator[KernelWorker]:
    info = ConnectionInfo(session_id="s1", key=b"k" * 32, session_dir=str(tmp_path))
    w = KernelWorker(info, TestSession(), dumps=orjson.dumps)
    w._iopub_signer = Signer(info.key, info.session_id)  # what serve() sets up
    yield w
    w.close()


def test_an_interrupt_before_the_command_starts_stops_it_without_running(worker):
    assert worker.interrupt("m1") is False  # nothing runs yet: remembered
    payload, status = worker._run("m1", "set_value", {"twig": "x", "value": 1})
    assert status == "interrupted" and orjson.loads(payload)["error"] == "Interrupted"
    payload, status = worker._run("m2", "get_value", {"twig": "x"})
    assert status == "error" and "no parameter 'x'" in orjson.loads(payload)["error"]
    # the remembered interrupt was used up: the same id later runs normally
    assert worker._run("m1", "echo", {"a": 1})[1] == "ok"


def test_claim_and_interrupt_race_from_two_threads_never_lose_one(worker):
    """Many rounds of ``interrupt()`` on the control thread racing the claim of its
    command: every round ends with the command either refused at its claim or found
    running (and signalled). The SIGINT it sends is caught here instead of raised."""
    signalled: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: signalled.append(signum))
    try:
        for i in range(1000):
            msg_id = f"m{i}"
            found_running: list[bool] = []
            go = threading.Barrier(2)

            def control(msg_id: str = msg_id, found: list[bool] = found_running, go=go) -> None:
                go.wait()
                found.append(worker.interrupt(msg_id))

            t = threading.Thread(target=control)
            t.start()
            go.wait()
            claimed = worker._claim(msg_id, "echo", 0.0)
            t.join()
            with worker._lock:
                worker._current = worker._pending_interrupt = None
            assert claimed == found_running[0], f"round {i}: the interrupt was lost"
    finally:
        signal.signal(signal.SIGINT, previous)
    assert signalled  # some rounds found the command running and signalled it
