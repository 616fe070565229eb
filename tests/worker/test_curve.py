"""CurveZMQ on the worker's channels (optional; the Slurm backend's ``encrypt``).

A real worker process started with a CURVE secret key in its connection file: the hub's
:class:`WorkerChannel` talks to it when given the public key, while a plain client, or
one with the wrong server key, gets nothing at all (not even an error) and the worker
keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import subprocess
import sys

import orjson
import pytest
import zmq
import zmq.asyncio

from phoebe_kernel_worker import protocol
from phoebe_kernel_worker.protocol import ConnectionInfo, Signer
from phoebe_spawner.channels import ChannelTimeout, WorkerChannel, WorkerEndpoint

from ..conftest import TEST_FACTORY
from ..waiting import async_wait_for, wait_for

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")


@pytest.fixture
def curve_worker(tmp_path):
    """A test worker serving with CurveZMQ; yields (its endpoint with the public key, key)."""
    key = protocol.new_key()
    secret = protocol.derive_curve_secret(key)
    info = ConnectionInfo(
        session_id="cz", key=key, session_dir=str(tmp_path / "s"), curve_secret_key=secret
    )
    conn = protocol.write_connection_file(tmp_path / "connection.json", info)
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "phoebe_kernel_worker", *TEST_FACTORY),
            *("--connection-file", str(conn), "--ready-file", str(ready)),
        ],
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for(ready.exists, "the worker to report ready", timeout=20)
        endpoints, _ = protocol.endpoints_from_json(ready.read_bytes())
        public = zmq.curve_public(secret.encode()).decode()
        yield WorkerEndpoint(**endpoints, curve_server_key=public), key
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_encrypted_channel_works(curve_worker):
    endpoint, key = curve_worker
    ctx = zmq.asyncio.Context()
    channel = WorkerChannel(ctx, "cz", key, endpoint)
    channel.connect()
    try:
        assert (await channel.control(protocol.STATUS_REQUEST, timeout=10))["state"] == "idle"
        reply = await channel.execute(b'{"command": "echo", "x": 1}', timeout=10)
        assert reply.json() == {"success": True, "result": {"x": 1}}
    finally:
        await channel.close()
        ctx.destroy(linger=0)


def _plain_request_gets_nothing(endpoint: str, key: bytes, **curve: bytes) -> bool:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for option, value in curve.items():
        setattr(sock, option, value)
    sock.connect(endpoint)
    try:
        _, frames = Signer(key, "cz").serialize(protocol.STATUS_REQUEST)
        with contextlib.suppress(zmq.Again):  # no completed handshake: nothing to send to
            sock.send_multipart(frames, flags=zmq.NOBLOCK)
        return sock.poll(1000) == 0
    finally:
        sock.close()
        ctx.term()


async def test_plain_and_wrong_key_clients_get_nothing(curve_worker):
    endpoint, key = curve_worker
    # right signing key, but no encryption: the handshake never completes
    assert await asyncio.to_thread(_plain_request_gets_nothing, endpoint.control, key)
    # encryption, but against another server key
    wrong_public, _ = zmq.curve_keypair()
    public, secret = zmq.curve_keypair()
    assert await asyncio.to_thread(
        _plain_request_gets_nothing,
        endpoint.control,
        key,
        curve_serverkey=wrong_public,
        curve_publickey=public,
        curve_secretkey=secret,
    )
    # the hub's channel with a wrong server key times out instead of talking
    ctx = zmq.asyncio.Context()
    wrong = WorkerChannel(
        ctx, "cz", key, dataclasses.replace(endpoint, curve_server_key=wrong_public.decode())
    )
    wrong.connect()
    try:
        with pytest.raises(ChannelTimeout):
            await wrong.control(protocol.STATUS_REQUEST, timeout=1)
    finally:
        await wrong.close()
        ctx.destroy(linger=0)
    # and the worker still serves the right client
    ctx = zmq.asyncio.Context()
    channel = WorkerChannel(ctx, "cz", key, endpoint)
    channel.connect()
    try:
        assert (await channel.control(protocol.STATUS_REQUEST, timeout=10))["state"] == "idle"
    finally:
        await channel.close()
        ctx.destroy(linger=0)


async def test_plain_subscriber_hears_nothing_on_iopub(curve_worker):
    endpoint, key = curve_worker
    zctx = zmq.Context()
    plain = zctx.socket(zmq.SUB)
    plain.setsockopt(zmq.LINGER, 0)
    plain.setsockopt(zmq.SUBSCRIBE, b"")
    plain.connect(endpoint.iopub)
    ctx = zmq.asyncio.Context()
    channel = WorkerChannel(ctx, "cz", key, endpoint)
    heard: list[str] = []
    channel.add_iopub_handler(lambda msg: heard.append(msg.msg_type))
    channel.connect()
    try:
        await asyncio.sleep(0.3)  # let both subscriptions settle
        await channel.execute(b'{"command": "steps", "n": 3, "delay": 0.01}', timeout=10)
        # the encrypted subscriber hears the command's output
        await async_wait_for(lambda: "stream" in heard, "the command's output", timeout=5)
        assert plain.poll(200) == 0  # the plain one hears nothing
    finally:
        plain.close()
        zctx.term()
        await channel.close()
        ctx.destroy(linger=0)


def test_curve_secret_is_per_session_and_stays_out_of_plain_connection_files(tmp_path):
    a, b = protocol.new_key(), protocol.new_key()
    secret = protocol.derive_curve_secret(a)
    assert secret == protocol.derive_curve_secret(a) != protocol.derive_curve_secret(b)
    assert len(secret) == 40  # Z85 of 32 bytes
    zmq.curve_public(secret.encode())  # a valid CURVE secret key
    info = ConnectionInfo(session_id="x", key=a, session_dir="/tmp/x")
    assert "curve_secret_key" not in info.to_dict()  # off by default: files unchanged
    with_curve = ConnectionInfo(
        session_id="x", key=a, session_dir="/tmp/x", curve_secret_key=secret
    )
    path = protocol.write_connection_file(tmp_path / "c.json", with_curve)
    assert protocol.read_connection_file(path).curve_secret_key == secret
    assert orjson.loads(path.read_bytes())["curve_secret_key"] == secret
    assert path.stat().st_mode & 0o777 == 0o600
