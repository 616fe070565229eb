"""A real worker process facing hostile or broken peers: it refuses and stays alive.

Uses the light test session so each worker starts in milliseconds; what is tested
here is the worker's transport (``phoebe_kernel_worker.worker``), which PHOEBE sessions
share.
"""

from __future__ import annotations

import asyncio
import os
import signal

import orjson
import pytest
import zmq

from phoebe_kernel_worker import protocol
from phoebe_kernel_worker.protocol import Signer
from phoebe_spawner.spawners.local import LocalProcessSpawner

from ..conftest import TEST_FACTORY
from ..waiting import async_wait_for


@pytest.fixture
async def worker(tmp_path):
    key = protocol.new_key()
    spawner = LocalProcessSpawner(
        session_id="w1",
        key=key.decode(),
        session_dir=str(tmp_path / "session"),
        runtime_dir=str(tmp_path / "runtime"),
        worker_args=TEST_FACTORY,
    )
    endpoint = await spawner.start()
    ctx = zmq.Context()
    socks = {}
    for name in ("shell", "control"):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, 3000)
        s.connect(endpoint.url(name))
        socks[name] = s
    yield spawner, socks, Signer(key, "w1"), key
    for s in socks.values():
        s.close()
    ctx.term()
    await spawner.stop(now=True)
    spawner.clear_state()


def request(sock, signer, msg_type, body=b"{}"):
    msg_id, frames = signer.serialize(msg_type, body)
    sock.send_multipart(frames)
    reply_signer = Signer(signer._key, signer.session)
    _, msg = reply_signer.deserialize(sock.recv_multipart())
    assert msg.parent_id == msg_id
    return msg


def assert_alive(socks, signer):
    msg = request(socks["shell"], signer, protocol.EXECUTE_REQUEST, b'{"command": "ping"}')
    assert msg.json() == {"success": True, "result": {"status": "ready"}}


async def wait_busy_with(socks, signer, msg_id: str) -> None:
    """Return once the worker says (on its control channel) that it runs ``msg_id``."""

    def running() -> bool:
        status = request(socks["control"], signer, protocol.STATUS_REQUEST).json()
        return status["state"] == "busy" and status.get("msg_id") == msg_id

    await async_wait_for(running, f"the worker to run {msg_id}")


def no_reply(sock, timeout_ms=300):
    return sock.poll(timeout_ms) == 0


async def test_garbage_unsigned_and_missigned_messages_are_ignored(worker):
    spawner, socks, signer, _ = worker
    for channel in ("shell", "control"):
        sock = socks[channel]
        sock.send_multipart([b"complete garbage"])
        sock.send_multipart([protocol.DELIM, b"", b"{}", b"{}"])
        sock.send_multipart([protocol.DELIM, b"00" * 32, b'{"msg_id":"x"}', b"{}"])
        sock.send_multipart([os.urandom(100) for _ in range(6)])
        _, frames = Signer(protocol.new_key(), "w1").serialize(protocol.SHUTDOWN_REQUEST)
        sock.send_multipart(frames)  # right shape, wrong key: must not shut down
        assert no_reply(sock)
    assert await spawner.poll() is None
    assert_alive(socks, signer)


async def test_replayed_message_runs_once(worker):
    _, socks, signer, _ = worker
    _, frames = signer.serialize(
        protocol.EXECUTE_REQUEST, b'{"command": "set_value", "twig": "n", "value": 1}'
    )
    socks["shell"].send_multipart(frames)
    assert socks["shell"].poll(3000)
    socks["shell"].recv_multipart()
    socks["shell"].send_multipart(frames)  # the same signed bytes again
    assert no_reply(socks["shell"])
    assert_alive(socks, signer)


async def test_signed_but_bad_requests_get_errors(worker):
    _, socks, signer, _ = worker
    for body in (b"not json", b"[1,2]", b'{"no_command": 1}', b'{"command": 5}'):
        msg = request(socks["shell"], signer, protocol.EXECUTE_REQUEST, body)
        assert msg.json()["success"] is False and msg.header["status"] == "bad_request"
    msg = request(socks["shell"], signer, "weird_request", b"{}")
    assert "unknown message type" in msg.json()["error"]
    msg = request(socks["control"], signer, "weird_request", b"{}")
    assert "unknown control message" in msg.json()["error"]
    assert_alive(socks, signer)


async def test_control_answers_while_a_command_runs(worker):
    _, socks, signer, _ = worker
    msg_id, frames = signer.serialize(
        protocol.EXECUTE_REQUEST, b'{"command": "sleep", "seconds": 20}'
    )
    socks["shell"].send_multipart(frames)
    await wait_busy_with(socks, signer, msg_id)
    status = request(socks["control"], signer, protocol.STATUS_REQUEST).json()
    assert status["state"] == "busy" and status["command"] == "sleep" and status["msg_id"] == msg_id
    # memory of the process tree: private (USS), proportional (PSS), resident (RSS)
    assert 0 < status["uss_mib"] <= status["pss_mib"] <= status["rss_mib"]
    # an interrupt aimed at another command does nothing
    other = request(socks["control"], signer, protocol.INTERRUPT_REQUEST, b'{"msg_id": "other"}')
    assert other.json() == {"interrupted": False}
    hit = request(
        socks["control"], signer, protocol.INTERRUPT_REQUEST, orjson.dumps({"msg_id": msg_id})
    )
    assert hit.json() == {"interrupted": True}
    assert socks["shell"].poll(10000)  # the sleep would take 20 s: the reply is the interrupt's
    _, reply = Signer(signer._key, "w1").deserialize(socks["shell"].recv_multipart())
    assert reply.header["status"] == "interrupted" and reply.json()["error"] == "Interrupted"
    assert_alive(socks, signer)


async def test_sigint_interrupts_a_busy_worker_and_ends_an_idle_one(worker):
    spawner, socks, signer, _ = worker
    msg_id, frames = signer.serialize(
        protocol.EXECUTE_REQUEST, b'{"command": "sleep", "seconds": 20}'
    )
    socks["shell"].send_multipart(frames)
    await wait_busy_with(socks, signer, msg_id)
    os.kill(spawner.pid, signal.SIGINT)
    assert socks["shell"].poll(3000)
    _, reply = Signer(signer._key, "w1").deserialize(socks["shell"].recv_multipart())
    assert reply.header["status"] == "interrupted"
    assert_alive(socks, signer)
    os.kill(spawner.pid, signal.SIGINT)
    assert await spawner._wait_exit(5) == 0


def _wakeups(pid: int) -> int:
    """Voluntary context switches of all the process's threads so far (each one a
    thread that went back to sleep after waking); /proc/PID/status counts only the
    main thread, so each task's is read."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/status") as status:
            for line in status:
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


async def test_an_idle_worker_sleeps_until_a_message_or_a_signal(worker):
    """A thousand idle sessions must cost the machine nothing: between commands the
    worker's threads sleep in polls with no timeout. Counted, not timed: over a second
    a worker that polled every 100 ms on two threads would wake 20 times."""
    spawner, socks, signer, _ = worker
    assert_alive(socks, signer)
    await asyncio.sleep(0.2)  # the reply's own wake-ups settle
    before = _wakeups(spawner.pid)
    await asyncio.sleep(1.0)
    assert _wakeups(spawner.pid) - before <= 2
    assert_alive(socks, signer)  # and a message still wakes it
    os.kill(spawner.pid, signal.SIGINT)  # as does a signal, which ends an idle worker
    assert await spawner._wait_exit(5) == 0


async def test_shutdown_request_ends_the_worker(worker):
    spawner, socks, signer, _ = worker
    assert request(socks["control"], signer, protocol.SHUTDOWN_REQUEST).json() == {
        "shutting_down": True
    }
    assert await spawner._wait_exit(5) == 0


async def test_sigterm_ends_a_busy_worker(worker):
    spawner, socks, signer, _ = worker
    msg_id, frames = signer.serialize(
        protocol.EXECUTE_REQUEST, b'{"command": "sleep", "seconds": 20}'
    )
    socks["shell"].send_multipart(frames)
    await wait_busy_with(socks, signer, msg_id)
    os.kill(spawner.pid, signal.SIGTERM)
    assert await spawner._wait_exit(5) == 0


async def test_interrupt_before_the_command_starts_is_not_lost(worker):
    _, socks, signer, _ = worker
    busy_id, busy = signer.serialize(
        protocol.EXECUTE_REQUEST, b'{"command": "sleep", "seconds": 2}'
    )
    queued_id, queued = signer.serialize(
        protocol.EXECUTE_REQUEST, b'{"command": "sleep", "seconds": 20}'
    )
    socks["shell"].send_multipart(busy)
    socks["shell"].send_multipart(queued)
    await wait_busy_with(socks, signer, busy_id)
    # the second command is still waiting in the socket: the interrupt is remembered
    early = request(
        socks["control"], signer, protocol.INTERRUPT_REQUEST, orjson.dumps({"msg_id": queued_id})
    )
    assert early.json() == {"interrupted": False}
    replies = {}
    verifier = Signer(signer._key, "w1")
    for _ in range(2):
        assert socks["shell"].poll(5000)
        _, reply = verifier.deserialize(socks["shell"].recv_multipart())
        replies[reply.parent_id] = reply
    assert replies[busy_id].header["status"] == "ok"
    assert replies[queued_id].header["status"] == "interrupted"  # at once, not after 20 s
    assert_alive(socks, signer)
