"""The one-shot registration listener against real TCP clients (no cluster needed).

The agent's own sender (:func:`phoebe_kernel_worker.node_agent.send_registration`)
is the good client; bad clients send wrong tokens, other sessions, wildcard endpoints
and oversized lines.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from phoebe_kernel_worker.node_agent import send_registration
from phoebe_kernel_worker.protocol.registration import registration_message
from phoebe_spawner.spawners.slurm.registration import (
    RegistrationError,
    RegistrationListener,
    check_endpoints,
)

TOKEN = "5e" * 32
ENDPOINTS = {
    "shell": "tcp://10.1.2.3:40001",
    "control": "tcp://10.1.2.3:40002",
    "iopub": "tcp://10.1.2.3:40003",
}


def fields():
    return {"session_id": "s1", "job_id": "7", "host": "node1", "endpoints": ENDPOINTS, "pid": 42}


async def raw_exchange(address: str, line: bytes) -> bytes:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(line)
    await writer.drain()
    answer = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return answer


@pytest.fixture
async def listener():
    lst = RegistrationListener(session_id="s1", token=TOKEN, host="127.0.0.1")
    await lst.start()
    yield lst
    await lst.close()


async def test_the_agent_registers_once(listener):
    message = registration_message(TOKEN, fields())
    await asyncio.to_thread(send_registration, listener.address, message, 5)
    report = await asyncio.wait_for(listener.report(), 5)
    assert report == {"endpoints": ENDPOINTS, "pid": 42, "job_id": "7", "host": "node1"}
    # one-shot: the port is closed once the report is in
    with pytest.raises(ConnectionRefusedError):
        await raw_exchange(listener.address, message)


async def test_bad_reports_are_denied_and_the_good_one_still_counts(listener):
    bad = [
        registration_message("00" * 32, fields()),  # another token
        registration_message(TOKEN, {**fields(), "session_id": "s2"}),  # another session
        registration_message(
            TOKEN, {**fields(), "endpoints": {**ENDPOINTS, "shell": "tcp://0.0.0.0:40001"}}
        ),
        registration_message(
            TOKEN, {**fields(), "endpoints": {**ENDPOINTS, "shell": "ipc:///tmp/x"}}
        ),
        b"x" * (128 * 1024) + b"\n",  # oversized
        b"not json\n",
    ]
    for line in bad:
        assert await raw_exchange(listener.address, line) == b"denied\n"
    assert listener.denied == len(bad) and not listener.report_future.done()
    good = registration_message(TOKEN, fields())
    assert await raw_exchange(listener.address, good) == b"ok\n"
    assert (await listener.report())["pid"] == 42


async def test_a_silent_client_does_not_block_others(listener, monkeypatch):
    monkeypatch.setattr("phoebe_spawner.spawners.slurm.registration.READ_TIMEOUT", 0.5)
    host, _, port = listener.address.rpartition(":")
    _idle_reader, idle_writer = await asyncio.open_connection(host, int(port))
    try:
        good = registration_message(TOKEN, fields())
        assert await raw_exchange(listener.address, good) == b"ok\n"
    finally:
        idle_writer.close()
        await idle_writer.wait_closed()


async def test_port_range_and_exhaustion():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    lst = RegistrationListener(
        session_id="s1", token=TOKEN, host="127.0.0.1", port_range=(free, free + 1)
    )
    await lst.start()
    try:
        assert lst.port == free
        other = RegistrationListener(
            session_id="s2", token=TOKEN, host="127.0.0.1", port_range=(free, free + 1)
        )
        with pytest.raises(RegistrationError, match="cannot listen"):
            await other.start()
    finally:
        await lst.close()
    assert lst.report_future.cancelled()  # close() ends a wait for a report


def test_check_endpoints():
    assert check_endpoints(ENDPOINTS) == ENDPOINTS
    v6 = {k: v.replace("10.1.2.3", "[fd00::2]") for k, v in ENDPOINTS.items()}
    assert check_endpoints(v6) == v6
    for bad in (
        None,
        {},
        {**ENDPOINTS, "iopub": "tcp://node1:5000"},  # a name, not an address
        {**ENDPOINTS, "iopub": "tcp://10.1.2.3:0"},
        {**ENDPOINTS, "iopub": "tcp://[::]:5000"},
    ):
        with pytest.raises(ValueError, match=r"endpoint|object"):
            check_endpoints(bad)
