"""The ``phoebe-spawner`` command as users run it: config generation, db and user
subcommands, start-up refusals, and clean shutdown on SIGTERM and SIGINT."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request

import orjson
import psutil
import pytest

from phoebe_spawner._data import share_dir
from phoebe_spawner.app import PhoebeSpawnerApp
from phoebe_spawner.configcheck import load_checked

from ..conftest import JWT_SECRET
from ..processes import gone
from ..waiting import wait_for

EXE = [sys.executable, "-m", "phoebe_spawner"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(args: list[str], cwd, env=None, timeout=60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EXE, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def untimed(stderr: str) -> list[str]:
    """The hub's log lines without their timestamps (``[<date> <time> PhoebeSpawnerApp]``)."""
    stamp = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ")
    return [stamp.sub("[", line) for line in stderr.splitlines()]


def http(
    method: str, url: str, body: bytes | None = None, token: str | None = None
) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    def up() -> bool:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            return http("GET", url + "/health")[0] == 200
        except OSError:
            return False

    wait_for(up, "the hub to answer /health", timeout=timeout, interval=0.1)


def test_generate_config(tmp_path):
    result = run(["--generate-config"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "phoebe_spawner_config.py").read_text()
    for trait in (
        "c.SessionManager.idle_timeout",
        "c.LocalProcessSpawner.mem_limit",
        "c.JWTAuthenticator.secret",
    ):
        assert trait in text
    again = run(["--generate-config"], cwd=tmp_path)
    assert again.returncode == 1 and "exists" in again.stderr


def test_generate_config_writes_the_file_config_names(tmp_path):
    """``--config`` names where the file goes; it need not exist yet (it did have to)."""
    target = tmp_path / "etc" / "hub_config.py"
    target.parent.mkdir()
    result = run(["--generate-config", "--config", str(target)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "c.SessionManager.idle_timeout" in target.read_text()
    assert not (tmp_path / "phoebe_spawner_config.py").exists()


def test_generated_config_is_the_essentials_then_the_whole_reference(tmp_path):
    """The curated example comes first, as it is shipped; the file loads through the hub's
    fail-closed loader with the example's settings; every option of every configurable
    class follows, commented out."""
    assert run(["--generate-config"], cwd=tmp_path).returncode == 0
    path = tmp_path / "phoebe_spawner_config.py"
    text = path.read_text()
    essentials = (share_dir() / "examples" / "phoebe_spawner_config.py").read_text()
    assert text.startswith(essentials.rstrip() + "\n")

    app = PhoebeSpawnerApp()
    config = load_checked(str(path), app.known_classes)
    assert config.SessionManager.idle_timeout == 2 * 3600
    assert config.PhoebeSpawnerApp.auth_mode == "jwt"
    assert config.LocalProcessSpawner.mem_limit == "4G"

    reference = text[len(essentials) :]
    assert not [line for line in reference.splitlines() if line.startswith("c.")]
    for cls in app.classes:
        for trait in cls.class_own_traits(config=True):
            assert f"\n# c.{cls.__name__}.{trait} = " in reference, (cls.__name__, trait)


def test_upgrade_db_and_create_user(tmp_path):
    data = tmp_path / "data"
    result = run(["upgrade-db", f"--PhoebeSpawnerApp.data_dir={data}"], cwd=tmp_path)
    assert result.returncode == 0 and "up to date" in result.stdout, result.stderr
    assert (data / "phoebe-spawner.sqlite").exists()
    env = {"PHOEBE_SPAWNER_NEW_PASSWORD": "a long password"}
    args = [
        "create-user",
        "--email",
        "Admin@Example.org",
        "--admin",
        f"--PhoebeSpawnerApp.data_dir={data}",
    ]
    result = run(args, cwd=tmp_path, env=env)
    assert result.returncode == 0 and "created user admin@example.org" in result.stdout, (
        result.stderr
    )
    assert "a long password" not in result.stdout + result.stderr
    dup = run(args, cwd=tmp_path, env=env)
    assert dup.returncode != 0 and "already exists" in dup.stderr


def test_refuses_weak_jwt_secret(tmp_path):
    result = run(
        ["--auth-mode", "jwt", "--port", "0", f"--data-dir={tmp_path}"],
        cwd=tmp_path,
        env={"PHOEBE_SPAWNER_JWT_SECRET": "test"},
    )
    assert result.returncode == 1 and "well-known" in result.stderr
    assert "test" not in result.stderr.split("well-known")[0].split("secret")[-1]


def test_unknown_spawner_is_a_clear_error(tmp_path):
    result = run(["--spawner", "nonesuch", "--port", "0", f"--data-dir={tmp_path}"], cwd=tmp_path)
    assert result.returncode == 1 and "unknown --spawner name 'nonesuch'" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serves_and_shuts_down_cleanly(tmp_path, sig):
    port = free_port()
    config = tmp_path / "config.py"
    config.write_text(
        "c.PhoebeSpawnerApp.spawner_class = 'local'\n"  # the workers are the hub's children
        "c.LocalProcessSpawner.worker_args = "
        "['--session-factory', 'phoebe_kernel_worker.testing:test_session']\n"
    )
    proc = subprocess.Popen(
        [
            *EXE,
            "--port",
            str(port),
            "--auth-mode",
            "jwt",
            f"--data-dir={tmp_path / 'data'}",
            f"--config={config}",
        ],
        cwd=tmp_path,
        env={**os.environ, "PHOEBE_SPAWNER_JWT_SECRET": JWT_SECRET},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # like a service started from a non-interactive shell: SIGINT inherited as ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc)
        status, data = http(
            "POST", url + "/auth/register", orjson.dumps({"email": "c@x.org", "password": "p" * 10})
        )
        assert status == 200
        token = data["access_token"]
        status, session = http("POST", url + "/dash/start-session", b"", token)
        assert status == 200
        worker = psutil.Process(proc.pid).children()[0]
        status, reply = http(
            "POST", url + f"/send/{session['session_id']}", b'{"command":"ping"}', token
        )
        assert reply == {"success": True, "result": {"status": "ready"}}
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0
        wait_for(lambda: not worker.is_running(), "the worker to exit", timeout=5)
        output = proc.stdout.read().decode() if proc.stdout else ""
        assert JWT_SECRET not in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_hub_killed_outright_restarts_with_the_same_sessions(tmp_path):
    """SIGKILL the hub with three live sessions (one mid-job), start it again."""
    port = free_port()
    config = tmp_path / "config.py"
    config.write_text(
        "c.PhoebeSpawnerApp.spawner_class = 'local'\n"  # the workers are the hub's children
        "c.LocalProcessSpawner.worker_args = "
        "['--session-factory', 'phoebe_kernel_worker.testing:test_session']\n"
    )
    argv = [*EXE, "--port", str(port), f"--data-dir={tmp_path / 'data'}", f"--config={config}"]
    url = f"http://127.0.0.1:{port}"

    def launch() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        wait_healthy(url, proc)
        return proc

    hub = launch()
    workers = []
    try:
        sids = []
        for i in range(3):
            status, session = http("POST", url + "/dash/start-session", b"{}")
            assert status == 200
            sids.append(session["session_id"])
            body = orjson.dumps({"command": "set_value", "twig": "n", "value": i})
            assert http("POST", url + f"/send/{sids[-1]}", body)[1]["success"]
        workers = psutil.Process(hub.pid).children()
        status, job = http(
            "POST", url + f"/api/v1/sessions/{sids[2]}/jobs", b'{"command": "sleep", "seconds": 60}'
        )
        assert status == 202
        wait_for(
            lambda: http("GET", url + f"/api/v1/jobs/{job['job_id']}")[1]["status"] == "running",
            "the job to run",
        )
        hub.kill()
        hub.wait()
        assert all(w.is_running() for w in workers)  # the workers outlive the hub

        hub = launch()
        listed = http("GET", url + "/dash/sessions")[1]
        assert sorted(listed) == sorted(sids) and all(
            s["status"] == "running" for s in listed.values()
        )
        for i, sid in enumerate(sids):
            # answered within http()'s 30 s: the orphaned 60 s sleep was interrupted
            reply = http("POST", url + f"/send/{sid}", b'{"command": "get_value", "twig": "n"}')[1]
            assert reply == {"success": True, "result": i}
        lost = http("GET", url + f"/api/v1/jobs/{job['job_id']}")[1]
        assert lost["status"] == "failed" and "restarted" in lost["error"]
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(timeout=20) == 0
        wait_for(
            lambda: not any(w.is_running() for w in workers), "the workers to exit", timeout=10
        )
    finally:
        if hub.poll() is None:
            hub.kill()
            hub.wait()
        for w in workers:
            if w.is_running():
                w.kill()


def test_without_readoption_workers_die_with_the_hub(tmp_path):
    port = free_port()
    config = tmp_path / "config.py"
    config.write_text(
        "c.PhoebeSpawnerApp.spawner_class = 'local'\n"  # the workers are the hub's children
        "c.LocalProcessSpawner.worker_args = "
        "['--session-factory', 'phoebe_kernel_worker.testing:test_session']\n"
        "c.SessionManager.readopt_workers = False\n"
    )
    argv = [*EXE, "--port", str(port), f"--data-dir={tmp_path / 'data'}", f"--config={config}"]
    url = f"http://127.0.0.1:{port}"
    hub = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    workers: list[psutil.Process] = []
    try:
        wait_healthy(url, hub)
        sids = [http("POST", url + "/dash/start-session", b"{}")[1]["session_id"] for _ in range(2)]
        workers = psutil.Process(hub.pid).children()
        assert len(workers) == 2
        hub.kill()
        hub.wait()
        wait_for(lambda: all(gone(w) for w in workers), "the workers to exit", timeout=30)
        hub = subprocess.Popen(
            argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        wait_healthy(url, hub)
        listed = http("GET", url + "/dash/sessions")[1]
        assert sorted(listed) == sorted(sids)
        assert all(
            s["status"] == "failed" and "does not re-adopt" in s["reason"] for s in listed.values()
        )
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(timeout=20) == 0
    finally:
        if hub.poll() is None:
            hub.kill()
            hub.wait()
        for w in workers:
            if w.is_running():
                w.kill()


CONFIG_MISTAKES = [
    (
        'c.SessionManager.idle_timeout = 60\nc.PhoebeSpawnerApp.auth_mdoe = "jwt"\n',
        "config.py, line 2: unknown setting c.PhoebeSpawnerApp.auth_mdoe; "
        "did you mean c.PhoebeSpawnerApp.auth_mode?",
    ),
    (
        "# idle sessions go quickly\nc.SesionManager.idle_timeout = 1\n",
        "config.py, line 2: unknown configurable class SesionManager "
        "(in c.SesionManager.idle_timeout); did you mean SessionManager?",
    ),
    (
        "c.SessionManager.idle_timeout = 60\nc.SessionManager.max_sessions = (\n",
        "config.py, line 2: syntax error: '(' was never closed",
    ),
    (
        "import os\n\nc.SessionManager.idle_timeout = float(os.environ['NO_SUCH_VARIABLE'])\n",
        "config.py, line 3: the config file raised KeyError: 'NO_SUCH_VARIABLE'",
    ),
    (
        'c.DockerSpawner.image = "phoebe"\nc.SessionManager.max_sessions = "many"\n',
        "config.py, line 2: bad value for c.SessionManager.max_sessions: "
        "The 'max_sessions' trait of a SessionManager instance expected an int, "
        "not the str 'many'.",
    ),
    (  # container elements are checked too
        'c.SessionManager.user_session_limits = {"ada@example.org": -1}\n',
        "config.py, line 1: bad value for c.SessionManager.user_session_limits: Values of "
        "the 'user_session_limits' trait of a SessionManager instance must be an int, but a "
        "value of -1 <class 'int'> was specified.",
    ),
    (  # a plug-in's class is known: its misspelled trait is caught like any other
        'c.SlurmSpawner.partiton = "short"\n',
        "config.py, line 1: unknown setting c.SlurmSpawner.partiton; "
        "did you mean c.SlurmSpawner.partition?",
    ),
]


@pytest.mark.parametrize(("text", "line"), CONFIG_MISTAKES)
def test_config_file_mistakes_stop_the_hub_with_one_line(tmp_path, text, line):
    (tmp_path / "config.py").write_text(text)
    result = run(["--config=config.py", "--port=0", f"--data-dir={tmp_path / 'data'}"], tmp_path)
    assert result.returncode == 1
    assert untimed(result.stderr) == [f"[PhoebeSpawnerApp] CRITICAL | cannot start: {line}"]
    assert not (tmp_path / "data").exists()  # refused before anything was created


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--PhoebeSpawnerApp.auth_mdoe=jwt", "--port=0"],
            "command line: unknown setting --PhoebeSpawnerApp.auth_mdoe; "
            "did you mean --PhoebeSpawnerApp.auth_mode?",
        ),
        (
            ["--SesionManager.idle_timeout=1", "--port=0"],
            "command line: unknown configurable class SesionManager "
            "(in --SesionManager.idle_timeout); did you mean SessionManager?",
        ),
        (
            ["--max-sessions-per-user=four", "--port=0"],
            "command line: bad value for --SessionManager.max_sessions_per_user: "
            "The 'max_sessions_per_user' trait of a SessionManager instance expected an "
            "int, not the str 'four'.",
        ),
        (  # a list option's second value, without its flag, would be dropped
            ["--LocalProcessSpawner.worker_uids", "64000", "65050", "--port=0"],
            "unexpected argument '65050' on the command line (a list option takes one value "
            "a flag: --Class.trait=1 --Class.trait=2, or --Class.trait=[1,2])",
        ),
        (
            ["--LocalProcessSpawner.worker_uids=[65000,64000]", "--port=0"],
            "LocalProcessSpawner.worker_uids must be [low, high) with 0 < low < high "
            "(or empty), not [65000, 64000]",
        ),
        (
            ["upgrade-db", "--PhoebeSpawnerApp.dat_dir=elsewhere"],
            "command line: unknown setting --PhoebeSpawnerApp.dat_dir; "
            "did you mean --PhoebeSpawnerApp.data_dir?",
        ),
    ],
)
def test_command_line_mistakes_stop_the_hub_with_one_line(tmp_path, args, line):
    result = run([*args, f"--data-dir={tmp_path / 'data'}"], tmp_path)
    assert result.returncode == 1
    assert untimed(result.stderr) == [f"[PhoebeSpawnerApp] CRITICAL | cannot start: {line}"]


def test_subcommand_reads_the_config_file_strictly(tmp_path):
    (tmp_path / "config.py").write_text("c.SessionManager.max_sesions = 3\n")
    result = run(["upgrade-db", "--config=config.py", f"--data-dir={tmp_path / 'd'}"], tmp_path)
    assert result.returncode == 1
    assert untimed(result.stderr) == [
        "[PhoebeSpawnerApp] CRITICAL | cannot start: config.py, line 1: unknown setting "
        "c.SessionManager.max_sesions; did you mean c.SessionManager.max_sessions?"
    ]


def test_a_valid_config_naming_every_kind_of_class_starts(tmp_path):
    """Base classes, optional backends, subcommands and lazy container edits are all known."""
    port = free_port()
    (tmp_path / "config.py").write_text(
        "c.Spawner.start_timeout = 20\n"
        "c.LocalProcessSpawner.worker_args = "
        "['--session-factory', 'phoebe_kernel_worker.testing:test_session']\n"
        "c.DockerSpawner.image = 'phoebe-worker'\n"
        "c.Application.log_level = 'INFO'\n"
        "c.CreateUser.admin = False\n"
        "c.SessionManager.cull_exempt_users.add('ada')\n"
        "c.SessionManager.user_session_limits = {'group:staff': 8}\n"
    )
    argv = [*EXE, f"--port={port}", "--config=config.py", f"--data-dir={tmp_path / 'data'}"]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_auth_mode_none_refuses_a_public_address(tmp_path):
    result = run(["--ip=0.0.0.0", "--port=0", f"--data-dir={tmp_path / 'data'}"], tmp_path)
    assert result.returncode == 1
    assert untimed(result.stderr) == [
        "[PhoebeSpawnerApp] CRITICAL | cannot start: auth mode 'none' on 0.0.0.0 would let "
        "anyone who can reach the port run PHOEBE sessions; listen on 127.0.0.1, choose "
        "another --auth-mode, or pass --allow-insecure"
    ]


def test_allow_insecure_starts_auth_mode_none_on_a_public_address(tmp_path):
    port = free_port()
    argv = [*EXE, "--ip=0.0.0.0", f"--port={port}", "--allow-insecure"]
    proc = subprocess.Popen(
        [*argv, f"--data-dir={tmp_path / 'data'}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        output = proc.stdout.read().decode() if proc.stdout else ""
        assert "auth mode 'none' on 0.0.0.0 (allow_insecure)" in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
