"""The OS wall around local workers, tried from inside real workers (issue 13).

A test worker's ``probe_wall`` command does what an attacker who escaped PHOEBE's
sandbox would: read the hub secret, the database, the hub's and the fork server's
``/proc/<pid>/environ`` and ``mem``, another session's directory and connection file;
write into another session's directory; ptrace and signal the hub and another worker;
connect and send to another worker's channel and to the hub; connect to the fork
server's and another unix socket of the hub's user. The test session has no Python
checks at all, so every refusal is the kernel's errno. Both local backends, run as
whoever runs the tests (root in CI: workers run as pool uids) and, from root, once more
with the whole hub as ``nobody`` (Landlock and seccomp alone).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from phoebe_kernel_worker import wall
from phoebe_spawner.spawners.forkserver import ForkServer

from ..conftest import Client
from ..processes import spares_of
from ..waiting import async_wait_for

BACKENDS = ["local", "local-forkserver"]
ROOT = os.geteuid() == 0
NOBODY = 65534
REFUSED = {"EACCES", "EPERM"}
# a root hub's workers do not even see the data directory (a private mount namespace)
REFUSED_OR_HIDDEN = REFUSED | ({"ENOENT"} if ROOT else set())


def require_wall() -> int:
    abi = wall.landlock_abi()
    if not ROOT and abi < 6:
        pytest.skip(f"an unprivileged hub's wall needs Landlock ABI 6 (this kernel: {abi})")
    if abi < 4:
        pytest.skip(f"the network wall needs Landlock ABI 4 (this kernel: {abi})")
    return abi


async def start(client: Client) -> str:
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 200, resp.body
    sid: str = resp.json()["session_id"]
    return sid


async def result(client: Client, sid: str, command: str, **kwargs: Any) -> Any:
    resp = await client.send(sid, command, **kwargs)
    assert resp.status == 200, resp.body
    body = resp.json()
    assert body["success"] is True, body
    return body["result"]


async def check_wall(make_hub: Any, backend: str) -> None:
    """Start two sessions and probe everything of the hub and of the other from one.
    With the fork server, both workers are spares forked ahead (``prefork``)."""
    app, client = await make_hub(PhoebeSpawnerApp__spawner_class=backend)
    if backend == "local-forkserver":
        server = app.manager.backend
        await async_wait_for(lambda: server.ready, "the fork server", timeout=30)
        await async_wait_for(lambda: len(spares_of(server.proc.pid)) >= 2, "2 spares", timeout=30)
    attacker, victim = await start(client), await start(client)
    data = Path(app.data_dir)
    victim_dir = Path(app.manager.session_dir("anonymous", victim))
    await result(client, victim, "touch", name="secret.txt")
    victim_conn = Path(app.manager.runtime_dir(victim)) / "connection.json"
    db = data / "phoebe-spawner.sqlite"
    for path in (Path(app.secret_file), db, victim_dir / "secret.txt", victim_conn):
        assert path.is_file(), path  # the probes aim at files that are there
    assert oct(data.stat().st_mode & 0o777) == "0o700"
    for private in (Path(app.secret_file), db):
        assert oct(private.stat().st_mode & 0o777) == "0o600", private
    hub = os.getpid()
    victim_pid = (await result(client, victim, "whereami"))["pid"]
    attacker_where = await result(client, attacker, "whereami")
    victim_port = app.manager.sessions[victim].spawner.endpoint.port
    pids = [hub, victim_pid]
    unix = []
    if backend == "local-forkserver":
        server = app.manager.backend
        assert isinstance(server, ForkServer) and server.proc is not None
        assert attacker_where["ppid"] == server.proc.pid  # really forked
        for sid in (attacker, victim):
            assert app.manager.sessions[sid].spawner.child.spare  # type: ignore[attr-defined]
        pids.append(server.proc.pid)
        unix.append(server.socket_path)
    await result(client, attacker, "touch", name="mine.txt")
    hub_socket = data.parent / "hub-user.sock"  # any unix socket of the hub's user
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(hub_socket))
    hub_socket.chmod(0o777)
    listener.listen(1)
    unix.append(str(hub_socket))
    try:
        probes = await result(
            client,
            attacker,
            "probe_wall",
            read=[
                app.secret_file,
                str(db),
                str(victim_dir / "secret.txt"),
                str(victim_conn),
                *(f"/proc/{pid}/environ" for pid in pids),
                *(f"/proc/{pid}/mem" for pid in pids),
                "mine.txt",  # its own files: the wall is not just everything refused
            ],
            list_dir=[str(victim_dir), str(data), "."],
            write_in=[str(victim_dir), str(data), "."],
            ptrace=pids,
            signal_pids=[victim_pid, hub],
            connect=[["127.0.0.1", int(victim_port)], ["127.0.0.1", app.bound_port]],
            unix=unix,
        )
    finally:
        listener.close()
    allowed = {"read mine.txt", "list .", "write ."}
    for name in allowed:
        assert probes.pop(name)["ok"], name
    in_data_dir = [k for k in probes if str(data) in k]
    for name, probe in probes.items():
        expected = REFUSED_OR_HIDDEN if name in in_data_dir else REFUSED
        assert not probe["ok"] and probe["errno"] in expected, (name, probe)
    assert len(probes) == 4 + 2 * len(pids) + 2 + 2 + len(pids) + 2 + 2 + len(unix)
    assert not (victim_dir / "probe-wall").exists()
    if ROOT:  # each worker has its own unprivileged uid
        owners = {
            Path(app.manager.session_dir("anonymous", s)).stat().st_uid for s in (attacker, victim)
        }
        assert len(owners) == 2 and 0 not in owners


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_wall_holds(make_hub: Any, backend: str) -> None:
    require_wall()
    await check_wall(make_hub, backend)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_wall_holds_for_an_unprivileged_hub(make_hub: Any, backend: str) -> None:
    """Without root (no uids to hand out) Landlock is the wall: the hub runs as nobody."""
    require_wall()
    if not ROOT:
        await check_wall(make_hub, backend)  # this run is unprivileged already
        return
    if shutil.which("setpriv") is None:
        pytest.skip("running a hub as nobody needs setpriv (util-linux)")
    base = Path(tempfile.mkdtemp(prefix="phoebe-wall-"))
    try:
        os.chown(base, NOBODY, NOBODY)
        repo = Path(__file__).resolve().parents[2]
        # as root: make the Python installation reachable, then become nobody for good
        launcher = (
            "import os, sys; from phoebe_kernel_worker import wall; "
            "wall.bridge(sys.argv[1:]); os.setgroups([]); "
            f"os.setresgid(*[{NOBODY}] * 3); os.setresuid(*[{NOBODY}] * 3); "
            f"os.execv(sys.executable, [sys.executable, '-m', 'pytest', '-q', '-p', "
            f"'no:cacheprovider', '--basetemp={base / 'run'}', "
            f"'{__file__}::test_the_wall_holds[{backend}]'])"
        )
        reach = [sys.prefix, sys.base_prefix, str(repo)]
        env = dict(os.environ, HOME=str(base), PYTHONDONTWRITEBYTECODE="1")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            launcher,
            *reach,
            cwd=repo,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 300)
        text = out.decode("utf-8", "replace")
        assert proc.returncode == 0, text[-3000:]
        assert "1 passed" in text, text[-3000:]
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def test_a_root_hub_never_starts_a_worker_as_root(make_hub: Any) -> None:
    if not ROOT:
        pytest.skip("only a hub running as root hands out worker uids")
    _app, client = await make_hub(LocalProcessSpawner__worker_uids=[])
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 503, resp.body
    assert "worker_uids is empty: workers never run as root" in resp.detail
