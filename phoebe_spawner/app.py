"""PhoebeSpawnerApp: configuration, command line, start-up and shutdown of the hub.

Wires the services together and holds no business logic: the Store (database), the
Authenticator (auth mode), the SessionManager (sessions and spawners) and the tornado
application (handlers). Configuration comes from ``phoebe_spawner_config.py``,
command-line flags, and environment variables for secrets (documented on each trait).

Used by the ``phoebe-spawner`` console script and by tests, which drive
:meth:`PhoebeSpawnerApp.setup` / :meth:`cleanup` in-process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import urllib.parse
from collections.abc import Generator
from pathlib import Path
from typing import Any

from traitlets import Bool, Float, Integer, TraitError, Unicode, default, validate
from traitlets.config import Application, Config, catch_config_error
from traitlets.config.loader import KVArgParseConfigLoader

from ._version import __version__
from .auth.base import Authenticator, User
from .auth.hubenv import check_service_overrides
from .checkpoints import CheckpointManager
from .configcheck import (
    CheckedArgLoader,
    ConfigProblem,
    KnownClasses,
    check,
    known_classes,
    load_checked,
)
from .configfile import config_file_text
from .handlers import HubContext
from .httpserver import CappedHTTPServer
from .hubsecret import load_secret
from .jobs.events import AdminEvents, UserEvents
from .jobs.manager import JobManager
from .metrics import HubMetrics
from .passbands import PassbandsCache
from .plugins import AUTH_GROUP, SPAWNER_GROUP, help_lines, import_object, load_class
from .preflight import (
    check_capacity,
    check_local_workers,
    listen,
    make_writable_dir,
    open_store,
    refuse_if_exposed,
)
from .sessions.limits import SessionLimits
from .sessions.manager import SessionManager
from .spawners.base import Spawner
from .spawners.local import LocalProcessSpawner
from .spawners.wall import harden_hub, sqlite_path
from .store import DatabaseSchemaError, Store
from .web import make_web_app


def _optional_classes() -> list[type]:
    """Configurable classes of the optional backends and modes (for --help-all and
    --generate-config); jupyterhub's only when it is installed."""
    from .spawners.docker import DockerSpawner  # the docker SDK is imported lazily
    from .spawners.forkserver import ForkServerSpawner
    from .spawners.slurm import SlurmSpawner

    classes: list[type] = [ForkServerSpawner, DockerSpawner, SlurmSpawner]
    try:
        from .auth.hub import HubAuthenticator
    except ImportError:  # jupyterhub is not installed
        return classes
    return [*classes, HubAuthenticator]


def _service_url() -> urllib.parse.SplitResult | None:
    """Where JupyterHub wants a managed service to listen ($JUPYTERHUB_SERVICE_URL)."""
    url = os.environ.get("JUPYTERHUB_SERVICE_URL")
    return urllib.parse.urlsplit(url) if url else None


class PhoebeSpawnerApp(Application):
    """The phoebe-spawner hub."""

    name = "phoebe-spawner"
    version = __version__
    description = "A hub that gives every user their own PHOEBE worker sessions."
    examples = """
    phoebe-spawner                                   # mode none, 127.0.0.1:8001, SQLite
    phoebe-spawner --auth-mode jwt --ip 0.0.0.0      # needs PHOEBE_SPAWNER_JWT_SECRET
    phoebe-spawner --generate-config                 # writes phoebe_spawner_config.py
    phoebe-spawner upgrade-db
    phoebe-spawner create-user --email ada@example.org --admin
    """

    aliases = {
        "ip": "PhoebeSpawnerApp.ip",
        "port": "PhoebeSpawnerApp.port",
        "auth-mode": "PhoebeSpawnerApp.auth_mode",
        "spawner": "PhoebeSpawnerApp.spawner_class",
        "data-dir": "PhoebeSpawnerApp.data_dir",
        "db": "PhoebeSpawnerApp.db_url",
        "config": "PhoebeSpawnerApp.config_file",
        "log-level": "Application.log_level",
        "max-sessions": "SessionManager.max_sessions",
        "max-sessions-per-user": "SessionManager.max_sessions_per_user",
        "idle-timeout": "SessionManager.idle_timeout",
    }
    flags = {
        "debug": (
            {"PhoebeSpawnerApp": {"debug": True, "log_level": logging.DEBUG}},
            "Debug logging, and tracebacks in error responses (never in production).",
        ),
        "generate-config": (
            {"PhoebeSpawnerApp": {"generate_config": True}},
            "Write a commented phoebe_spawner_config.py and exit.",
        ),
        "upgrade-db": (
            {"PhoebeSpawnerApp": {"upgrade_db": True}},
            "Upgrade the database schema at start-up if it is older than this version.",
        ),
        "allow-insecure": (
            {"PhoebeSpawnerApp": {"allow_insecure": True}},
            "Allow auth mode none on an address other than loopback (anyone who can reach it "
            "runs PHOEBE sessions).",
        ),
        "keep-workers": (
            {"SessionManager": {"stop_workers_on_shutdown": False}},
            "Leave workers running on shutdown, to be re-adopted by the next start.",
        ),
    }

    # --- configuration ------------------------------------------------------------------

    config_file = Unicode(
        "phoebe_spawner_config.py", help="The config file to load (a missing default is fine)."
    ).tag(config=True)
    generate_config = Bool(False, help="Write the default config file and exit.").tag(config=True)
    debug = Bool(False, help="Tracebacks in 5xx responses and worker errors.").tag(config=True)
    ip = Unicode(
        "127.0.0.1",
        help="""Address to listen on. Use 0.0.0.0 to accept remote clients (then use an
        auth mode other than none).""",
    ).tag(config=True)
    port = Integer(8001, help="Port to listen on (0 picks a free one).").tag(config=True)

    @default("ip")
    def _default_ip(self) -> str:
        url = _service_url()
        return (url.hostname or "127.0.0.1") if url else "127.0.0.1"

    @default("port")
    def _default_port(self) -> int:
        url = _service_url()
        return (url.port or 80) if url else 8001

    base_url = Unicode(
        "/",
        help="""URL prefix every route is served under. Default: $JUPYTERHUB_SERVICE_PREFIX
        when running as a JupyterHub service, else /.""",
    ).tag(config=True)

    @default("base_url")
    def _default_base_url(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")

    @validate("base_url")
    def _slashed_base_url(self, proposal: dict[str, Any]) -> str:
        value = str(proposal["value"]).strip("/")
        return f"/{value}/" if value else "/"

    auth_mode = Unicode(
        help="""Authentication mode: none, jwt, external, hub (or a registered plug-in name).
        Default: hub when the JupyterHub service environment ($JUPYTERHUB_SERVICE_NAME and
        $JUPYTERHUB_API_TOKEN) is present, else none.""",
    ).tag(config=True)

    @default("auth_mode")
    def _default_auth_mode(self) -> str:
        in_hub = os.environ.get("JUPYTERHUB_SERVICE_NAME") and os.environ.get(
            "JUPYTERHUB_API_TOKEN"
        )
        return "hub" if in_hub else "none"

    authenticate_prometheus = Bool(
        True, help="Whether GET /metrics needs an admin or the metrics token (like JupyterHub)."
    ).tag(config=True)
    metrics_token = Unicode(
        help="""A token a Prometheus scraper sends (Authorization: Bearer <token>) to read
        /metrics. Default: $PHOEBE_SPAWNER_METRICS_TOKEN; empty means admins only."""
    ).tag(config=True)

    @default("metrics_token")
    def _default_metrics_token(self) -> str:
        return os.environ.get("PHOEBE_SPAWNER_METRICS_TOKEN", "")

    authenticator_class = Unicode(
        "", help="Authenticator class or entry-point name (overrides auth_mode)."
    ).tag(config=True)
    spawner_class = Unicode(
        "local-forkserver",
        help="""Spawner backend: an installed spawner's name (phoebe-spawner --help lists
        them; case-insensitive: local-forkserver forks local workers from a template with
        PHOEBE loaded, cold-starting when it cannot start; local cold-starts each) or a
        dotted class path.""",
    ).tag(config=True)

    data_dir = Unicode(
        help="""Directory for the database, the hub secret, session storage and worker
        runtime files. Default: $PHOEBE_SPAWNER_DATA_DIR or ./phoebe-spawner-data."""
    ).tag(config=True)

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return os.path.abspath(os.environ.get("PHOEBE_SPAWNER_DATA_DIR", "phoebe-spawner-data"))

    @validate("data_dir")
    def _abs_data_dir(self, proposal: dict[str, Any]) -> str:
        return os.path.abspath(os.path.expanduser(proposal["value"]))

    db_url = Unicode(
        help="""SQLAlchemy URL of the database. Default: $PHOEBE_SPAWNER_DB_URL or SQLite
        at <data_dir>/phoebe-spawner.sqlite. Never passed to workers."""
    ).tag(config=True)

    @default("db_url")
    def _default_db_url(self) -> str:
        return os.environ.get(
            "PHOEBE_SPAWNER_DB_URL", f"sqlite:///{Path(self.data_dir) / 'phoebe-spawner.sqlite'}"
        )

    db_busy_timeout = Float(
        5.0, help="Seconds a SQLite write waits for a lock before the request gets 503."
    ).tag(config=True)
    upgrade_db = Bool(False, help="Upgrade an older database schema at start-up.").tag(config=True)
    secret_file = Unicode(
        help="""File holding the hub secret that session keys derive from (created 0600 on
        first start). $PHOEBE_SPAWNER_SECRET (hex) takes precedence."""
    ).tag(config=True)

    @default("secret_file")
    def _default_secret_file(self) -> str:
        return str(Path(self.data_dir) / "phoebe_spawner_secret")

    max_body_size = Integer(
        64 * 1024 * 1024, help="Largest request body in bytes (larger ones get 413)."
    ).tag(config=True)
    body_timeout = Integer(60, help="Seconds a client may take to send a request body.").tag(
        config=True
    )
    idle_connection_timeout = Integer(
        300, help="Seconds an idle keep-alive connection stays open."
    ).tag(config=True)
    sse_keepalive = Float(
        15.0, help="Seconds between keep-alive comments on idle event streams."
    ).tag(config=True)
    compress_responses = Bool(
        False,
        help="""gzip responses for clients that accept it (saves bandwidth on large
        models, costs hub CPU on every response).""",
    ).tag(config=True)
    max_connections = Integer(
        2000,
        help="""Open HTTP connections (event streams included) the hub accepts at once. At
        the cap a new connection replaces the one that has waited longest for request
        headers; when every one is busy with a request it gets 503. 0 = no cap.""",
    ).tag(config=True)
    max_connections_per_ip = Integer(
        64,
        help="""Open HTTP connections one client address may hold at once; beyond them a new
        connection gets 429 and is closed. Behind a trusted proxy (trust_proxy_headers) it
        counts the requests in progress of each real client address instead, since every
        connection comes from the proxy. 0 = no cap.""",
    ).tag(config=True)
    header_timeout = Float(
        10.0,
        help="""Seconds a new connection has to send the headers of its first request
        (then it gets 408 and is closed), so connections that never finish their headers
        cannot hold slots; idle_connection_timeout applies between requests.""",
    ).tag(config=True)
    trust_proxy_headers = Bool(
        False,
        help="""Take client addresses (and the scheme) from X-Forwarded-For/X-Real-Ip
        (X-Scheme/X-Forwarded-Proto) headers. Only behind a reverse proxy that sets them,
        with the hub reachable by nothing else: any client could send them.""",
    ).tag(config=True)
    allow_insecure = Bool(
        False,
        help="""Start in auth mode none on an address other than loopback. Without it the
        hub refuses: anyone who can reach the port could run PHOEBE sessions.""",
    ).tag(config=True)

    @default("log_level")
    def _default_log_level(self) -> int:
        return logging.INFO

    @default("log_format")
    def _default_log_format(self) -> str:
        # a timestamp on every line (a hub's log is read after the fact); warnings and
        # errors say their level
        return "[%(asctime)s.%(msecs)03d %(name)s]%(highlevel)s %(message)s"

    @property
    def classes(self) -> list[type]:  # type: ignore[override]
        from .auth.external import ExternalAuthenticator
        from .auth.jwt import JWTAuthenticator
        from .auth.none import NoAuthenticator

        return [
            PhoebeSpawnerApp,
            SessionManager,
            SessionLimits,
            JobManager,
            CheckpointManager,
            Spawner,
            LocalProcessSpawner,
            NoAuthenticator,
            JWTAuthenticator,
            ExternalAuthenticator,
            *_optional_classes(),
        ]

    subcommands = {
        "upgrade-db": (
            "phoebe_spawner.subcommands.UpgradeDB",
            "Create or upgrade the database schema.",
        ),
        "create-user": ("phoebe_spawner.subcommands.CreateUser", "Create an account (jwt mode)."),
    }

    def emit_description(self) -> Generator[str]:
        """``--help``'s description, then the spawners and auth modes installed here."""
        yield from super().emit_description()
        yield from help_lines()

    # --- start-up -------------------------------------------------------------------------

    @catch_config_error
    def initialize(self, argv: list[str] | None = None) -> None:
        try:
            super().initialize(argv)  # the command line, checked by check_command_line
            if self.subapp:
                return
            self.load_configuration(self.cli_config)
        except ConfigProblem as e:
            self.log.critical("cannot start: %s", e)
            self.exit(1)
        self.log.propagate = False
        # traitlets puts log_level on the *handler* and leaves the loggers at DEBUG, so
        # every disabled debug call (and the access log of every request) would still
        # build a record for the handler to drop: the loggers take the level themselves
        self.log.setLevel(int(self.log_level))  # type: ignore[call-overload]
        for name in ("tornado.access", "tornado.application", "tornado.general", "phoebe_spawner"):
            logger = logging.getLogger(name)
            logger.parent = self.log
            logger.setLevel(self.log.level)

    # --- configuration, failing closed (see configcheck.py) ---------------------------------

    def known_classes(self, config: Config) -> KnownClasses:
        """Every configurable this hub knows, with the backends ``config`` chooses."""
        subcommands = [import_object(spec) for spec, _ in self.subcommands.values()]
        section = config.get("PhoebeSpawnerApp", {})
        chosen = [
            (SPAWNER_GROUP, section.get("spawner_class")),
            (AUTH_GROUP, section.get("authenticator_class")),
        ]
        return known_classes([*self.classes, *subcommands], (AUTH_GROUP, SPAWNER_GROUP), chosen)

    def check_command_line(self, config: Config) -> None:
        """Refuse unknown ``--Class.trait`` names and bad values (:class:`ConfigProblem`)."""
        check(config, self.known_classes(config), "command line")

    def _create_loader(self, *args: Any, **kwargs: Any) -> KVArgParseConfigLoader:
        check = self.check_command_line
        return CheckedArgLoader(
            *args, **kwargs, log=self.log, subcommands=self.subcommands, check=check
        )

    def load_configuration(self, cli: Config) -> None:
        """Load ``config_file`` strictly and apply it, then ``cli`` (which wins).

        A missing default file is fine; a missing named one, a file that does not run, an
        unknown class or trait and a bad value are a :class:`ConfigProblem`.
        """
        path = self.config_file
        if not path or not os.path.exists(path):
            # --generate-config --config NEW writes the file it names
            if path and path != "phoebe_spawner_config.py" and not self.generate_config:
                raise ConfigProblem(f"config file {path} not found")
            return
        file_config = load_checked(path, self.known_classes, cli)
        try:
            self.update_config(file_config)
            self.update_config(cli)
        except TraitError as e:
            raise ConfigProblem(f"{path}: {' '.join(str(e).split())}") from None

    def make_authenticator(self, store: Store) -> Authenticator:
        cls = load_class(AUTH_GROUP, self.authenticator_class or self.auth_mode)
        auth: Authenticator = cls(parent=self, store=store, log=self.log)
        if auth.has_trait("base_url"):
            auth.set_trait("base_url", self.base_url)
        return auth

    def make_data_dir(self) -> None:
        """The private data directory, proven writable (:class:`StartupProblem` names it);
        the hub process itself made private (umask 077, non-dumpable: see
        :func:`~phoebe_spawner.spawners.wall.harden_hub`). Called by :meth:`setup` and the
        subcommands."""
        make_writable_dir(self.data_dir)
        files = [sqlite_path(self.db_url), self.secret_file]
        for problem in harden_hub(self.data_dir, files):
            self.log.warning("cannot make the hub private: %s", problem)

    async def setup(self, *, check_workers: bool = False) -> None:
        """Build every service and start listening (tests call this in-process).

        Refuses before anything is made (the errors :meth:`run` reports in one line) when
        a backend name is unknown, auth mode none is exposed, the port is taken, the data
        directory is not writable, the database cannot be opened, with ``check_workers``
        (the command line does it) local workers cannot import PHOEBE, or the machine's
        hard limits cannot hold ``max_sessions`` (:func:`~.preflight.check_capacity`).
        """
        auth_class = load_class(AUTH_GROUP, self.authenticator_class or self.auth_mode)
        spawner_class = load_class(SPAWNER_GROUP, self.spawner_class)
        mode = getattr(auth_class, "mode", "")
        refuse_if_exposed(mode, self.ip, allow_insecure=self.allow_insecure, log=self.log)
        check_service_overrides(
            ip=self.ip, port=self.port, base_url=self.base_url, auth_mode=mode, log=self.log
        )
        socks = listen(self.ip, self.port)
        store: Store | None = None
        try:
            if check_workers:
                await check_local_workers(spawner_class, self, self.log)
            self.make_data_dir()
            timeout = self.db_busy_timeout
            store = await open_store(self.db_url, upgrade=self.upgrade_db, busy_timeout=timeout)
            self.store = store
            self.authenticator = self.make_authenticator(store)
            await self.authenticator.setup()
            secret = load_secret(self.secret_file)
            self.manager = SessionManager(
                parent=self,
                log=self.log,
                store=self.store,
                spawner_class=spawner_class,
                secret=secret,
                data_dir=self.data_dir,
                debug=self.debug,
                per_user_limits=self.authenticator.mode != "none",
            )
            configured = spawner_class(parent=self.manager)  # its ports, its workers
            self.manager.port_range = list(configured.port_range)
            self.manager.fit_capacity(self.max_connections, check_capacity, configured.max_workers)
        except BaseException:  # refusing to start leaves nothing open
            for sock in socks:
                sock.close()
            if store is not None:
                await store.close()
            raise
        self.user_events = UserEvents()
        self.user_events.subscribe(self.manager.bus)
        self.admin_events = AdminEvents()
        self.admin_events.subscribe(self.manager.bus)
        self.metrics = HubMetrics()
        self.metrics.connect(self.manager)
        self.jobs = JobManager(
            parent=self,
            log=self.log,
            manager=self.manager,
            store=self.store,
            user_events=self.user_events,
            url_prefix=self.base_url.rstrip("/"),
        )
        self.checkpoints = CheckpointManager(
            parent=self,
            log=self.log,
            data_dir=self.data_dir,
            url_prefix=self.base_url.rstrip("/"),
            store=self.store,
            manager=self.manager,
            user_events=self.user_events,
        )
        self.manager.before_stop = self.checkpoints.before_stop
        await self.jobs.recover()
        await self.manager.start_backend()
        await self.manager.recover(self._user_of_row)
        self.manager.start_background_tasks()
        self.hub = HubContext(
            manager=self.manager,
            authenticator=self.authenticator,
            store=self.store,
            version=__version__,
            debug=self.debug,
            max_body_size=self.max_body_size,
            base_url=self.base_url,
            jobs=self.jobs,
            checkpoints=self.checkpoints,
            user_events=self.user_events,
            sse_keepalive=self.sse_keepalive,
            passbands=PassbandsCache(),
            admin_events=self.admin_events,
            metrics=self.metrics,
            metrics_auth=self.authenticate_prometheus,
            metrics_token=self.metrics_token,
        )
        self.web_app = make_web_app(
            self.hub,
            [*self.authenticator.extra_routes(self.base_url)],
            secret=secret,
            compress=self.compress_responses,
        )
        self.http_server = CappedHTTPServer(
            self.web_app,
            max_connections=self.max_connections,
            max_connections_per_ip=self.max_connections_per_ip,
            header_timeout=self.header_timeout,
            xheaders=self.trust_proxy_headers,
            max_body_size=self.max_body_size * 2 + 1024,
            body_timeout=self.body_timeout,
            idle_connection_timeout=self.idle_connection_timeout,
        )
        self.http_server.add_sockets(socks)
        self.bound_port = socks[0].getsockname()[1]
        self.log.info(
            "phoebe-spawner %s (auth %s, spawner %s) at http://%s:%d%s",
            __version__,
            self.authenticator.mode,
            spawner_class.__name__,
            self.ip,
            self.bound_port,
            self.base_url,
        )

    def _user_of_row(self, row: dict[str, Any]) -> User:
        return User(
            user_id=row["user_id"],
            name=row.get("user_name") or row["user_id"],
            full_name=row.get("full_name") or "",
        )

    async def cleanup(self) -> None:
        """Stop listening, stop (or leave) the workers, close the database."""
        self.http_server.stop()
        try:
            await asyncio.wait_for(self.http_server.close_all_connections(), 5)
        except TimeoutError:
            self.log.warning("some HTTP connections did not close within 5 s")
        await self.jobs.shutdown()
        await self.manager.shutdown()
        await self.store.close()

    async def run(self) -> None:
        try:
            await self.setup(check_workers=True)
        except (DatabaseSchemaError, ValueError, OSError, ImportError, TraitError) as e:
            self.log.critical("cannot start: %s", " ".join(str(e).split()))
            raise SystemExit(1) from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # our own handlers: a service started by a non-interactive shell has SIGINT ignored
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        self.log.info("shutting down")
        await self.cleanup()

    def start(self) -> None:
        if self.subapp:
            self.subapp.start()
            return
        if self.generate_config:
            self.write_default_config()
            return
        try:
            asyncio.run(self.run())
        except KeyboardInterrupt:  # Ctrl-C during start-up, before run() handles signals
            self.log.critical("interrupted during start-up")
            self.exit(130)

    def write_default_config(self) -> None:
        path = Path(self.config_file)
        if path.exists():
            self.log.critical("%s exists; remove it or pass --config another path", path)
            self.exit(1)
        path.write_text(config_file_text(self.generate_config_file()))
        print(f"Wrote {path}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``phoebe-spawner``)."""
    app = PhoebeSpawnerApp.instance()
    app.initialize(argv)
    app.start()
