"""Start-up failures and accounts as a new user meets them, through the real command line.

Every way the hub can fail before it serves is one or two lines on stderr naming the
thing and the fix, with exit status 1 and no traceback: an unwritable data directory, a
port in use, an unknown spawner or auth mode (names are case-insensitive), workers that
cannot import PHOEBE, a bad database URL. ``create-user`` and ``upgrade-db`` use the hub's
configuration and say which database they wrote, and their ``-h`` works. The jwt login
page offers registration when it is open and says whom to ask when it is not.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from phoebe_spawner.plugins import AUTH_GROUP, SPAWNER_GROUP, load_class, registered
from phoebe_spawner.preflight import shown_url, worker_python
from phoebe_spawner.sessions.policy import HUB_FDS
from phoebe_spawner.spawners.forkserver import ForkServerSpawner

from ..conftest import JWT_SECRET
from .test_cli import EXE, free_port, http, run, wait_healthy

HTML = {"Accept": "text/html,application/xhtml+xml"}
NODE_MODULES = Path(__file__).resolve().parents[2] / ".venv" / "node" / "node_modules"
TEST_WORKERS = (
    "c.LocalProcessSpawner.worker_args = "
    "['--session-factory', 'phoebe_kernel_worker.testing:test_session']\n"
)


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The refusal on stderr, checked to be an exit status of 1 and at most two
    non-blank lines without a traceback; returned as one string."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert 1 <= len(lines) <= 2, result.stderr
    assert "Traceback" not in result.stderr
    return "\n".join(lines)


def test_a_data_directory_below_a_file_is_named(tmp_path):
    (tmp_path / "afile").write_text("")
    data = tmp_path / "afile" / "data"
    message = refusal(run(["--port=0", f"--data-dir={data}"], tmp_path))
    assert f"the data directory {data} is not writable (Not a directory)" in message
    assert "--data-dir" in message


def test_a_read_only_data_directory_is_named(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    # root writes into any directory: for root, the directory is a read-only bind mount
    mounted = os.geteuid() == 0
    if mounted:
        subprocess.run(["mount", "--bind", str(locked), str(locked)], check=True)
        subprocess.run(["mount", "-o", "remount,ro,bind", str(locked)], check=True)
    try:
        message = refusal(run(["--port=0", f"--data-dir={locked}"], tmp_path))
    finally:
        if mounted:
            subprocess.run(["umount", str(locked)], check=True)
        locked.chmod(0o700)
    why = "Read-only file system" if mounted else "Permission denied"
    assert f"the data directory {locked} is not writable ({why})" in message


def test_a_port_in_use_is_named_with_the_way_out(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run([f"--port={port}", f"--data-dir={tmp_path / 'data'}"], tmp_path)
    message = refusal(result)
    assert f"127.0.0.1:{port} is already in use" in message and "--port" in message
    assert not (tmp_path / "data").exists()  # refused before anything was made


@pytest.mark.parametrize(
    ("option", "group"), [("--spawner", SPAWNER_GROUP), ("--auth-mode", AUTH_GROUP)]
)
def test_an_unknown_backend_name_lists_the_valid_ones(tmp_path, option, group):
    result = run([option, "nonesuch", "--port=0", f"--data-dir={tmp_path / 'data'}"], tmp_path)
    message = refusal(result)
    names = ", ".join(sorted(registered(group)))
    assert f"unknown {option} name 'nonesuch'; the installed" in message
    assert names in message
    assert not (tmp_path / "data").exists()


def test_backend_names_are_case_insensitive():
    from phoebe_spawner.auth.jwt import JWTAuthenticator
    from phoebe_spawner.spawners.forkserver import ForkServerSpawner

    assert load_class(SPAWNER_GROUP, "Local-ForkServer") is ForkServerSpawner
    assert load_class(AUTH_GROUP, "JWT") is JWTAuthenticator


def test_the_hub_starts_with_names_in_capitals(tmp_path):
    port = free_port()
    (tmp_path / "config.py").write_text(TEST_WORKERS)
    argv = [*EXE, f"--port={port}", "--config=config.py", f"--data-dir={tmp_path / 'data'}"]
    proc = subprocess.Popen(
        [*argv, "--spawner=LOCAL", "--auth-mode=JWT"],
        cwd=tmp_path,
        env={**os.environ, "PHOEBE_SPAWNER_JWT_SECRET": JWT_SECRET},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        assert http("GET", f"http://127.0.0.1:{port}/auth/config")[1] == {"mode": "jwt"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        output = proc.stdout.read().decode() if proc.stdout else ""
        assert "(auth jwt, spawner LocalProcessSpawner)" in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_workers_that_cannot_import_phoebe_stop_the_hub(tmp_path):
    """A PHOEBE that does not import in the workers' environment (here: shadowed by a
    broken module on their PYTHONPATH) is found at start, not at the first session."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "phoebe.py").write_text("raise ImportError('libphoebe.so: cannot open it')\n")
    (tmp_path / "config.py").write_text(
        f"c.LocalProcessSpawner.environment = {{'PYTHONPATH': {str(shadow)!r}}}\n"
    )
    result = run(["--config=config.py", "--port=0", f"--data-dir={tmp_path / 'data'}"], tmp_path)
    message = refusal(result)
    assert "workers cannot import PHOEBE (ImportError: libphoebe.so: cannot open it)" in message
    assert f"{sys.executable} -m pip install ./packaging/worker" in message
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("spawner", ["local", "local-forkserver"])
def test_a_worker_python_without_the_worker_package_stops_the_hub(tmp_path, spawner):
    """-S: the workers' Python without site-packages, as a Python the worker was never
    installed into."""
    (tmp_path / "config.py").write_text(
        f"c.LocalProcessSpawner.cmd = [{sys.executable!r}, '-I', '-S', '-m', "
        "'phoebe_kernel_worker']\n"
    )
    argv = ["--config=config.py", f"--spawner={spawner}", "--port=0"]
    message = refusal(run([*argv, f"--data-dir={tmp_path / 'data'}"], tmp_path))
    assert "No module named 'phoebe_kernel_worker'" in message
    assert "-m pip install ./packaging/worker" in message


def _open_files_limit(soft: int, hard: int) -> Callable[[], None]:
    """A ``preexec_fn`` that gives the hub (as ``ulimit -Sn``/``-Hn`` would) these limits."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_max_sessions_the_open_files_limit_cannot_hold_is_refused_with_the_number(tmp_path):
    """Asked for 1,100 sessions under a hard limit of 1,024 open files the hub refuses in
    one line saying how many sessions the machine allows and how to change it, instead
    of failing the 120th start; the number it names starts."""
    (tmp_path / "config.py").write_text(TEST_WORKERS)
    argv = [*EXE, "--config=config.py", f"--data-dir={tmp_path / 'data'}"]
    argv += ["--spawner=local-forkserver", "--PhoebeSpawnerApp.max_connections=100"]
    limited = {"cwd": tmp_path, "capture_output": True, "text": True, "timeout": 60}
    limits = _open_files_limit(1024, 1024)
    result = subprocess.run(
        [*argv, "--port=0", "--max-sessions=1100"],
        preexec_fn=limits,
        **limited,
    )
    message = refusal(result)
    allowed = (1024 - HUB_FDS - 100) // ForkServerSpawner.hub_fds_per_session
    assert f"max_sessions 1100 needs {HUB_FDS + 100 + 8 * 1100} open files" in message
    assert f"the hard limit (ulimit -Hn) is 1024: this machine allows {allowed} sessions" in message
    assert "raise the hard limit (ulimit -Hn" in message
    assert f"or lower --max-sessions to {allowed}" in message

    port = free_port()
    argv += [f"--port={port}", f"--max-sessions={allowed}"]
    proc = subprocess.Popen(argv, preexec_fn=limits, cwd=tmp_path)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="worker uids bound capacity only for a root hub")
def test_a_max_sessions_beyond_the_worker_uids_is_refused_with_the_number(tmp_path):
    """A root hub runs each worker as its own uid: asked for more sessions than its
    ``worker_uids`` range holds it refuses in one line instead of answering the 1001st
    start 429; with the range widened the same max_sessions starts."""
    (tmp_path / "config.py").write_text(TEST_WORKERS)
    argv = ["--config=config.py", "--spawner=local-forkserver", "--max-sessions=1100"]
    argv += [f"--data-dir={tmp_path / 'data'}"]
    message = refusal(run([*argv, "--port=0"], tmp_path))
    assert "max_sessions 1100 needs 1100 workers but the spawner runs at most 1000" in message
    assert "LocalProcessSpawner.worker_uids" in message
    assert (
        "this machine allows 1000 sessions; widen that range or lower --max-sessions to 1000"
        in message
    )

    port = free_port()
    wide = ["--LocalProcessSpawner.worker_uids=[64000,65100]"]
    proc = subprocess.Popen([*EXE, *argv, *wide, f"--port={port}"], cwd=tmp_path)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_a_database_url_that_does_not_parse_is_named(tmp_path):
    result = run(["--db=nonsense", "--port=0", f"--data-dir={tmp_path / 'data'}"], tmp_path)
    message = refusal(result)
    assert "cannot open the database nonsense: it is not a database URL" in message
    assert "--db" in message


def test_an_unreachable_database_is_named_without_its_password(tmp_path):
    pytest.importorskip("psycopg")
    url = f"postgresql+psycopg://ada:hunter2secret@127.0.0.1:{free_port()}/hub"
    message = refusal(run([f"--db={url}", "--port=0", f"--data-dir={tmp_path}"], tmp_path))
    assert "cannot open the database postgresql+psycopg://ada:***@127.0.0.1:" in message
    assert "Connection refused" in message
    assert "hunter2secret" not in message


def test_database_urls_are_shown_without_their_password():
    assert shown_url("postgresql://ada:hunter2@db/hub") == "postgresql://ada:***@db/hub"
    # a URL SQLAlchemy cannot parse is still shown without what looks like a password
    assert shown_url("postgres ql://ada:hunter2@db/hub") == "postgres ql://ada:***@db/hub"


def test_only_a_python_m_worker_command_is_checked():
    python = ["/usr/bin/python3", "-P"]
    assert worker_python([*python, "-m", "phoebe_kernel_worker"]) == python
    assert worker_python(["/opt/site/start-worker.sh", "--fast"]) is None


def test_help_lists_the_installed_spawners_and_auth_modes(tmp_path):
    result = run(["--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    spawners = ", ".join(sorted(registered(SPAWNER_GROUP)))
    modes = ", ".join(sorted(registered(AUTH_GROUP)))
    assert f"Installed spawners (--spawner, case-insensitive): {spawners}" in result.stdout
    assert f"Installed auth modes (--auth-mode, case-insensitive): {modes}" in result.stdout
    assert "local-forkserver" in spawners


@pytest.mark.parametrize("subcommand", ["create-user", "upgrade-db"])
def test_subcommand_help_works(tmp_path, subcommand):
    result = run([subcommand, "-h"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "--data-dir" in result.stdout and "--db" in result.stdout


def test_create_user_writes_the_hubs_database_and_says_which(tmp_path):
    """The account goes where the hub's config file puts the database, the command says
    so, and the hub started with that config file lets the user log in."""
    data = tmp_path / "hubdata"
    (tmp_path / "hub.py").write_text(
        TEST_WORKERS + f"c.PhoebeSpawnerApp.data_dir = {str(data)!r}\n"
    )
    env = {"PHOEBE_SPAWNER_NEW_PASSWORD": "a long password"}
    args = ["create-user", "--config=hub.py", "--email", "ada@example.org"]
    created = run(args, tmp_path, env=env)
    assert created.returncode == 0, created.stderr
    db = f"sqlite:///{data / 'phoebe-spawner.sqlite'}"
    assert f"created user ada@example.org (id 1) in {db} (a new database" in created.stdout
    again = run(["upgrade-db", "--config=hub.py"], tmp_path)
    assert again.stdout.strip() == f"database schema is up to date: {db}", again.stderr
    assert not (tmp_path / "phoebe-spawner-data").exists()  # not the default directory

    port = free_port()
    proc = subprocess.Popen(
        [*EXE, f"--port={port}", "--config=hub.py", "--auth-mode=jwt"],
        cwd=tmp_path,
        env={**os.environ, "PHOEBE_SPAWNER_JWT_SECRET": JWT_SECRET},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc)
        body = orjson.dumps({"email": "ada@example.org", "password": "a long password"})
        status, login = http("POST", url + "/auth/login", body)
        assert status == 200 and login["token_type"] == "bearer"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_create_user_failures_are_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    env = {"PHOEBE_SPAWNER_NEW_PASSWORD": "a long password"}
    args = ["create-user", "--email=ada@example.org", f"--data-dir={tmp_path / 'afile' / 'd'}"]
    message = refusal(run(args, tmp_path, env=env))
    assert message.startswith("phoebe-spawner create-user: the data directory")
    assert "afile/d is not writable" in message


@pytest.mark.parametrize(
    ("registration", "shown", "absent"),
    [
        ("open", ['href="#register"', 'id="register-form"'], ["ask your administrator"]),
        (
            "domains",
            ['href="#register"', "with an email address at example.org, example.net"],
            ["ask your administrator"],
        ),
        ("off", ["ask your administrator"], ['href="#register"', 'id="register-form"']),
    ],
)
async def test_the_login_page_offers_registration_only_when_open(
    make_hub, registration, shown, absent
):
    _app, client = await make_hub(
        auth_mode="jwt",
        JWTAuthenticator__registration=registration,
        JWTAuthenticator__registration_domains=["example.org", "example.net"],
    )
    page = await client.get("/", headers=HTML)
    text = " ".join(page.body.decode().split())
    assert page.status == 401 and 'id="login-form"' in text
    for snippet in shown:
        assert snippet in text
    for snippet in absent:
        assert snippet not in text


# headless Chromium on the login page: the "Create an account" link opens the form, a
# registration logs the browser in, and the page reloads as the user page
REGISTER_IN_CHROMIUM = r"""
const { chromium } = require("playwright-core");
(async () => {
  const env = process.env;
  const context = await chromium.launchPersistentContext(env.PROFILE, {
    executablePath: env.CHROMIUM, headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run"],
  });
  const seen = { errors: [] };
  try {
    const page = await context.newPage();
    page.on("pageerror", (e) => seen.errors.push(String(e)));
    await page.goto(env.SERVICE_URL);
    seen.form_hidden_at_first = !(await page.isVisible("#register-form"));
    await page.click("#register-link a");
    await page.waitForSelector("#register-form", { state: "visible" });
    await page.fill("#register-form input[name=email]", "grace@example.org");
    await page.fill("#register-form input[name=password]", "short");
    await page.$eval("#register-form input[name=password]", (e) => e.removeAttribute("minlength"));
    await page.click("#register-form button[type=submit]");
    await page.waitForSelector("#register-error:not([hidden])");
    seen.error = await page.textContent("#register-error");
    await page.fill("#register-form input[name=password]", "a long enough password");
    await page.click("#register-form button[type=submit]");
    await page.waitForSelector("text=Your sessions");
    seen.who = (await page.textContent("header .who")).trim();
  } finally {
    await context.close();
  }
  console.log(JSON.stringify(seen));
})().catch((e) => { console.error(e); process.exit(1); });
"""


async def test_registering_from_the_login_page_in_chromium(make_hub, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    node = shutil.which("node")
    if chromium is None or node is None or not (NODE_MODULES / "playwright-core").is_dir():
        pytest.skip("Chromium, node or playwright-core is missing (.ci/run installs them)")
    _app, client = await make_hub(auth_mode="jwt")
    proc = await asyncio.create_subprocess_exec(
        node,
        "-e",
        REGISTER_IN_CHROMIUM,
        env={
            **os.environ,
            "NODE_PATH": str(NODE_MODULES),
            "CHROMIUM": chromium,
            "PROFILE": str(tmp_path / "profile"),
            "SERVICE_URL": client.base_url + "/",
        },
        cwd=NODE_MODULES.parent,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, f"{out.decode()}\n{err.decode()}"
    seen = json.loads(out.decode().strip().splitlines()[-1])
    assert seen["errors"] == []
    assert seen["form_hidden_at_first"] is True
    assert "at least 10 characters" in seen["error"]  # the hub's own words
    assert seen["who"] == "grace@example.org"
