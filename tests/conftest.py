"""Shared fixtures: in-process hubs on random ports, an HTTP helper, leak checks.

Tiers (see README): ``tests/unit`` (pure logic), ``tests/worker`` (the worker alone),
``tests/integration`` (a real hub with real worker processes: fast fault-injecting
test sessions, and real PHOEBE sessions for the ``phoebe`` marker).

Set ``PHOEBE_SPAWNER_REQUIRE_ALL=1`` (CI does) to turn every skip into a failure, so
a missing optional component can never pass silently.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from traitlets.config import Config

from phoebe_spawner.app import PhoebeSpawnerApp
from phoebe_spawner.sessions.cpu import cpu_hierarchy, tree_name

from .waiting import WaitTimeout, wait_for

os.environ.setdefault("PHOEBE_ENABLE_ONLINE_PASSBANDS", "FALSE")

# Tests press Ctrl-C (a real SIGINT to this process, as a terminal sends). A suite started
# in the background of a non-interactive shell (CI scripts, `nohup ... &`) inherits SIGINT
# ignored, and Python then installs no KeyboardInterrupt handler: give it the one an
# interactive start has.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

TEST_FACTORY = ["--session-factory", "phoebe_kernel_worker.testing:test_session"]
JWT_SECRET = "x" * 24 + "-test-secret-0123456789"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if (
        os.environ.get("PHOEBE_SPAWNER_REQUIRE_ALL")
        and report.skipped
        and not hasattr(report, "wasxfail")
    ):
        report.outcome = "failed"
        report.longrepr = f"skipped, but PHOEBE_SPAWNER_REQUIRE_ALL is set: {report.longrepr}"


def child_pids() -> set[int]:
    """This process's live descendants. A child that exits while they are listed is left
    out on its own (answering "none" for all of them would make every other child look
    like a leak at the next check)."""
    pids = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                pids.add(p.pid)
        except psutil.Error:
            continue
    return pids


def refilled_spare(pid: int, before: set[int]) -> bool:
    """Whether ``pid`` is a spare a fork server that outlives the test (a hub of a module
    fixture) forked to replace one a session took: it belongs to that fork server."""
    try:
        proc = psutil.Process(pid)
        return proc.name() == "phoebe-spare" and proc.ppid() in before
    except psutil.Error:
        return False


#: Daemons a session fixture started on first use, possibly inside a test (the Slurm
#: cluster's); never leaks. Their descendants (a Slurm job's processes) still count.
SERVICE_PIDS: set[int] = set()


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Any:
    """Every test must leave no worker process behind (checked after each test)."""
    before = child_pids()
    yield

    def leaked() -> set[int]:
        return {p for p in child_pids() - before - SERVICE_PIDS if not refilled_spare(p, before)}

    try:
        wait_for(lambda: not leaked(), "the test's child processes to exit", timeout=15)
    except WaitTimeout:
        pytest.fail(f"leaked child processes: {[psutil.Process(p).cmdline() for p in leaked()]}")


def listening_ports() -> set[int]:
    """TCP ports this test process listens on (hubs run in-process)."""
    return {
        c.laddr.port
        for c in psutil.Process().net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


@pytest.fixture(scope="session", autouse=True)
def no_orphaned_workers(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """At the end of the run, no worker started by any test may still exist anywhere.

    Workers of hubs run as subprocesses are not our children once their hub is gone,
    so this looks for any process whose command line points into this run's temporary
    directory (test-only leak detection; the hub itself never sweeps by command line).
    """
    base = str(tmp_path_factory.getbasetemp())
    listening_before = listening_ports()
    yield
    leaked_ports = listening_ports() - listening_before
    assert not leaked_ports, f"the test run left ports listening: {sorted(leaked_ports)}"

    def orphans() -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                ours = any(base in a for a in p.info["cmdline"] or [])
                if ours and p.pid != os.getpid() and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except psutil.Error:
                continue
        return found

    try:
        wait_for(lambda: not orphans(), "the run's worker processes to exit", timeout=10)
    except WaitTimeout:
        leaked = [(p.pid, p.info["cmdline"]) for p in orphans()]
        for p in orphans():
            p.kill()
        pytest.fail(f"orphaned worker processes after the test run: {leaked}")


def cpu_trees_of(base: Path) -> dict[str, Path]:
    """The cpu isolation trees of the hubs whose data directories are under ``base`` (at
    most four levels down), by path: every hub of this run builds its tree beside this
    process's own cgroup (cpu_isolation is on by default), named after its data dir."""
    where = cpu_hierarchy()
    if where is None:
        return {}
    mount, own, _ = where
    here = mount / own.lstrip("/")
    if here.name == "hub" and here.parent.name.startswith("phoebe-spawner-"):
        here = here.parent.parent  # inside a hub's tree: its trees are beside that one
    names = {tree_name(str(base))}
    for path, dirs, _ in os.walk(base):
        depth = Path(path).relative_to(base).parts
        if len(depth) >= 4:
            dirs.clear()
        names.update(tree_name(os.path.join(path, d)) for d in dirs)
    return {str(here / n): here / n for n in names if (here / n).is_dir()}


def remove_cgroup_tree(root: Path) -> None:
    """Remove a left cgroup tree, deepest groups first (only empty groups can go)."""
    for path, _, _ in sorted(os.walk(root), key=lambda w: -len(w[0])):
        with contextlib.suppress(OSError):
            os.rmdir(path)


@pytest.fixture(scope="session", autouse=True)
def no_cgroups_left(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """At the end of the run no hub of it may have left its cgroup tree (the cpu
    isolation groups): each is removed at hub exit, and one kept for re-adopted workers
    must be gone once they are. Found ones are removed, then reported."""
    yield
    left = cpu_trees_of(tmp_path_factory.getbasetemp())
    for root in left.values():
        remove_cgroup_tree(root)
    assert not left, f"the test run left cgroup trees: {sorted(left)}"


@dataclass
class Response:
    status: int
    body: bytes
    headers: Any

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def detail(self) -> str:
        return str(self.json().get("detail"))


class Client:
    """A small async HTTP client for the hub's API (plain HTTP, like any old client)."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.http = AsyncHTTPClient()

    async def request(
        self,
        method: str,
        path: str,
        json: Any = ...,
        *,
        body: bytes | None = None,
        token: str | None = ...,  # type: ignore[assignment]
        headers: dict[str, str] | None = None,
        timeout: float = 120,
        follow_redirects: bool = True,
    ) -> Response:
        hdrs = dict(headers or {})
        tok = self.token if token is ... else token
        if tok:
            hdrs["Authorization"] = f"Bearer {tok}"
        if json is not ...:
            body = orjson.dumps(json)
            hdrs.setdefault("Content-Type", "application/json")
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        resp = await self.http.fetch(
            HTTPRequest(
                self.base_url + path,
                method=method,
                body=body,
                headers=hdrs,
                request_timeout=timeout,
                allow_nonstandard_methods=True,
                follow_redirects=follow_redirects,
            ),
            raise_error=False,
        )
        return Response(resp.code, resp.body or b"", resp.headers)

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, json: Any = ..., **kw: Any) -> Response:
        return await self.request("POST", path, json, **kw)

    async def send(self, session_id: str, command: str, **kwargs: Any) -> Response:
        return await self.post(f"/send/{session_id}", {"command": command, **kwargs})


@pytest.fixture(scope="session")
def postgres() -> Any:
    """A private PostgreSQL server for the run (skips when the package is absent)."""
    from .postgres import PostgresServer, find_bindir

    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql; .ci/run installs it)")
    server = PostgresServer(bindir)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def docker_engine() -> Any:
    """A private Docker engine and the test worker image for the run (see tests/docker_engine.py).

    Skips when no engine can be started; fails at the end if a test left a container.
    """
    from .docker_engine import EngineUnavailable, start_engine

    try:
        engine = start_engine()
    except EngineUnavailable as e:
        pytest.skip(str(e))
    yield engine
    leftovers = engine.stop()
    assert not leftovers, f"containers left after the docker tests: {leftovers}"


@pytest.fixture(scope="session")
def slurm_cluster() -> Any:
    """A private single-node Slurm cluster for the run, its node in a network namespace of
    its own (see tests/slurm_cluster.py). Skips with the reason where the machine cannot
    run one; fails (``IsolationFailed``) where it could isolate the node and did not.
    Its queue must be empty at the end."""
    from .slurm_cluster import ClusterUnavailable, SlurmCluster

    cluster = SlurmCluster()
    try:
        cluster.start()
    except ClusterUnavailable as e:
        pytest.skip(f"no Slurm cluster: {e}")
    assert cluster.isolated, "the Slurm node shares the hub's network"
    SERVICE_PIDS.update(cluster.daemon_pids())
    yield cluster
    left = cluster.stop()
    assert not left, f"Slurm jobs were left in the queue after the tests: {left}"


HubFactory = Callable[..., Any]


def hub_config(data_dir: Any, *, auth_mode: str, phoebe: bool, **overrides: Any) -> Config:
    """A test hub's config: a random port, the cold ``local`` spawner, fast polls, no start
    rate limit, test workers (unless ``phoebe``), known secrets; ``overrides`` as
    ``Class__trait=value``. Everything else is the default: ``cpu_isolation`` is on
    where this process can create cgroups (root here), so every test's workers run in
    their own cpu groups unless it passes ``SessionManager__cpu_isolation=False``."""
    c = Config()
    c.PhoebeSpawnerApp.data_dir = str(data_dir)
    c.PhoebeSpawnerApp.port = 0
    c.PhoebeSpawnerApp.auth_mode = auth_mode
    c.PhoebeSpawnerApp.config_file = ""
    c.PhoebeSpawnerApp.spawner_class = "local"  # the tests name the fork server when they mean it
    c.SessionManager.poll_interval = 0.2
    c.SessionManager.start_rate_per_minute = 0  # load tests start hundreds of sessions
    c.SessionManager.cull_interval = 3600
    c.SessionManager.memory_interval = 3600
    c.LocalProcessSpawner.start_timeout = 60 if phoebe else 20
    if not phoebe:
        c.LocalProcessSpawner.worker_args = TEST_FACTORY
    c.JWTAuthenticator.secret = JWT_SECRET
    c.ExternalAuthenticator.secret = JWT_SECRET
    for dotted, value in overrides.items():
        cls, _, trait = dotted.partition("__")
        setattr(getattr(c, cls), trait, value)
    return c


@pytest.fixture
async def make_hub(tmp_path: Any) -> AsyncIterator[HubFactory]:
    """Build in-process hubs: ``app, client = await make_hub(auth_mode="jwt", phoebe=False)``."""
    apps: list[PhoebeSpawnerApp] = []

    async def factory(
        *, auth_mode: str = "none", phoebe: bool = False, data_dir: Any = None, **overrides: Any
    ) -> tuple[PhoebeSpawnerApp, Client]:
        data_dir = data_dir or tmp_path / f"hub{len(apps)}"
        c = hub_config(data_dir, auth_mode=auth_mode, phoebe=phoebe, **overrides)
        app = PhoebeSpawnerApp(config=c)
        app.log.setLevel("DEBUG" if os.environ.get("PHOEBE_SPAWNER_TEST_DEBUG") else "WARNING")
        await app.setup()
        apps.append(app)
        return app, Client(f"http://127.0.0.1:{app.bound_port}")

    yield factory
    for app in reversed(apps):
        await app.cleanup()
    # each hub removes its cpu isolation tree at exit, unless it left workers running
    # for re-adoption (a later hub of the same data dir, stopping them, removes it then)
    trees = {a.manager.cpu.root: a.manager.stop_workers_on_shutdown for a in apps if a.manager.cpu}
    left = [str(root) for root, stopped in trees.items() if stopped and root.exists()]
    assert not left, f"cgroup trees left at hub exit: {left}"


async def register(client: Client, email: str, password: str = "correct horse battery") -> str:  # noqa: S107
    """Register a jwt-mode user and return the token."""
    resp = await client.post("/auth/register", {"email": email, "password": password})
    assert resp.status == 200, resp.body
    token: str = resp.json()["access_token"]
    return token
