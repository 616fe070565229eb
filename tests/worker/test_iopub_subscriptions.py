"""The worker builds an iopub message only when a subscriber wants its topic.

The hub follows ``progress`` and ``stream`` only; every command used to build, sign and
hand two busy/idle ``status`` messages to ZMQ, which then dropped them. The worker's
XPUB socket reports (un)subscriptions, and ``_publish`` skips unwanted topics before
building anything. Drives the real KernelWorker in this process with real SUB peers.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
import zmq

from phoebe_kernel_worker.protocol import ConnectionInfo, Signer
from phoebe_kernel_worker.testing import TestSession
from phoebe_kernel_worker.worker import KernelWorker

from ..waiting import wait_for


class CountingSigner(Signer):
    """A signer that counts the messages it builds."""

    built: list[str]

    def serialize(self, msg_type, content=b"{}", **kw):  # type: ignore[no-untyped-def]
        self.built.append(msg_type)
        return super().serialize(msg_type, content, **kw)


@pytest.fixture
def worker(tmp_path) -> Iterator[KernelWorker]:
    info = ConnectionInfo(
        session_id="s1", key=b"k" * 32, session_dir=str(tmp_path), transport="ipc"
    )
    w = KernelWorker(info, TestSession(), dumps=orjson.dumps)
    signer = CountingSigner(info.key, info.session_id)
    signer.built = []
    w._iopub_signer = signer  # what serve() sets up
    w.bind()
    yield w
    w.close()


def subscriber(ctx: zmq.Context, w: KernelWorker, topic: bytes) -> zmq.Socket:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(w.endpoints["iopub"])
    return sub


def heard(sub: zmq.Socket) -> list[str]:
    out = []
    while sub.poll(200):
        out.append(sub.recv_multipart()[0].decode())
    return out


def test_unwanted_status_is_never_built(worker):
    ctx = zmq.Context()
    try:
        progress = subscriber(ctx, worker, b"progress")
        wait_for(lambda: worker._wanted(b"progress"), "the progress subscription")
        worker._run("m1", "echo", {"a": 1})
        assert worker._iopub_signer.built == []  # type: ignore[attr-defined]
        assert heard(progress) == []

        everything = subscriber(ctx, worker, b"")
        wait_for(lambda: worker._wanted(b"status"), "a subscription to everything")
        worker._run("m2", "echo", {"a": 1})
        assert worker._iopub_signer.built == ["status", "status"]  # type: ignore[attr-defined]
        assert heard(everything) == ["status", "status"]

        everything.close()  # its subscription goes with it; the progress one stays
        wait_for(lambda: not worker._wanted(b"status"), "the subscription to everything to go")
        assert worker._wanted(b"progress")
        worker._run("m3", "echo", {"a": 1})
        assert worker._iopub_signer.built == ["status", "status"]  # type: ignore[attr-defined]
        progress.close()
    finally:
        ctx.term()
