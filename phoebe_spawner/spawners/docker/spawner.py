"""DockerSpawner: one hardened container per session, driven through the docker SDK.

Selected with ``PhoebeSpawnerApp.spawner_class = "docker"``; the session manager is its
only caller. The hub-wide :class:`~.engine.EngineConnection` (made by
:meth:`DockerSpawner.start_backend`, given to every spawner as ``backend``) runs each
blocking docker SDK call on its own threads, never on the event loop; the container's
mounts, limits and security options come from :mod:`.layout`, which also says how the
worker's key and endpoints travel. The hub dials only addresses it derives itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from traitlets import (
    Bool,
    CaselessStrEnum,
    Dict,
    Float,
    Integer,
    List,
    TraitError,
    Unicode,
    default,
    validate,
)

from phoebe_kernel_worker.protocol import endpoints_from_json

from ...channels import WorkerEndpoint
from ..base import NUMERICAL_ENV, PHOEBE_ENV, ByteSpecification, Spawner, SpawnError
from . import layout
from .engine import (
    ALIVE_STATES,
    ContainerGone,
    EngineConnection,
    container_exit,
    describe_exit,
    engine_errors,
    explain,
)

LOG_TAIL_LINES = 20


class DockerSpawner(Spawner):
    """Start each worker in its own container (``spawner_class = "docker"``).

    Configure it as ``c.DockerSpawner.<trait>``; ``docs/docker.md`` explains the traits.
    """

    # --- the image ---------------------------------------------------------------------
    image = Unicode(
        "phoebe-spawner-worker:latest",
        help="""The worker image (built from share/phoebe_spawner/docker/Dockerfile). It must
        run ``python -m phoebe_kernel_worker`` (see ``cmd``).""",
    ).tag(config=True)

    allowed_images = List(
        Unicode(),
        help="""If not empty, the only images a session may run: start() refuses any other
        image, including one a subclass or a hook picks per user.""",
    ).tag(config=True)

    pull_policy = CaselessStrEnum(
        ["ifnotpresent", "always", "never"],
        default_value="ifnotpresent",
        help="""When to pull the image: 'ifnotpresent' (pull only if missing), 'always'
        (before every start) or 'never' (a missing image fails the start).""",
    ).tag(config=True)

    pull_timeout = Float(
        600.0, help="Seconds an image pull may take (not counted in start_timeout)."
    ).tag(config=True)

    # --- networking --------------------------------------------------------------------
    network_mode = Unicode(
        "none",
        help="""Docker network mode: 'none' (the default and the safest: the worker talks to
        the hub through ipc sockets in a bind-mounted directory) or 'host' (the worker
        binds TCP on ``ip``, normally 127.0.0.1). Use ``network_name`` for a private
        network instead.""",
    ).tag(config=True)

    network_name = Unicode(
        "",
        help="""A user-defined docker network to attach containers to (overrides
        network_mode). The worker binds TCP inside its container and the hub connects to
        the container's address on that network, so the hub must be able to route there
        (the same host, or a container on the same network). Nothing is published on the
        host's interfaces.""",
    ).tag(config=True)

    transport = CaselessStrEnum(
        ["auto", "ipc", "tcp"],
        default_value="auto",
        help="""How the hub reaches the worker's ZeroMQ channels: 'ipc' (sockets in the
        bind-mounted runtime directory; needs the hub on the same host), 'tcp', or 'auto'
        (ipc with network_mode 'none', tcp otherwise).""",
    ).tag(config=True)

    ipc_fallback_root = Unicode(
        help="""A short directory for a session's runtime mount when the path under the
        hub's data_dir is too long for a Unix socket (108 bytes). Default:
        $TMPDIR/phoebe-spawner-ipc-<uid>.""",
    ).tag(config=True)

    @default("ipc_fallback_root")
    def _default_ipc_fallback_root(self) -> str:
        return str(Path(tempfile.gettempdir()) / f"phoebe-spawner-ipc-{os.geteuid()}")

    # --- storage -----------------------------------------------------------------------
    volumes = Dict(
        help="""Extra mounts: ``{host_path: container_path}`` (read-only) or ``{host_path:
        {"bind": container_path, "mode": "ro"|"rw"}}``. ``{username}``, ``{user_id}`` and
        ``{session_id}`` in either path are replaced by escaped, filesystem-safe values,
        e.g. ``{"/srv/shared/{username}": {"bind": "/data", "mode": "rw"}}``.""",
    ).tag(config=True)

    session_mount = Unicode(
        "/srv/phoebe/session",
        help="Where the session's own (writable) directory appears inside the container.",
    ).tag(config=True)

    runtime_mount = Unicode(
        "/run/phoebe",
        help="Where the connection file, ready file and ipc sockets appear in the container.",
    ).tag(config=True)

    tmpfs_size = ByteSpecification(
        "256M", help="Size of the container's /tmp (tmpfs; counts towards mem_limit)."
    ).tag(config=True)

    # --- limits and hardening ------------------------------------------------------------
    pids_limit = Integer(
        512, help="Processes and threads one container may run (0 = no limit)."
    ).tag(config=True)

    container_user = Unicode(
        help="""``uid:gid`` the worker runs as; never root. Default: the hub's own uid:gid,
        or 1000:1000 when the hub runs as root (which then hands the session's files to
        that uid). A hub that is not root can only run containers as its own uid.""",
    ).tag(config=True)

    @default("container_user")
    def _default_container_user(self) -> str:
        if os.geteuid() == 0:
            return "1000:1000"
        return f"{os.geteuid()}:{os.getegid()}"

    @validate("container_user")
    def _validate_container_user(self, proposal: dict[str, Any]) -> str:
        value = str(proposal["value"])
        uid, _, gid = value.partition(":")
        if not (uid.isdigit() and (gid.isdigit() or not gid)):
            raise TraitError(f"container_user must be numeric 'uid:gid', not {value!r}")
        if int(uid) == 0 or (gid and int(gid) == 0):
            raise TraitError("container_user must not be root")
        return value if gid else f"{uid}:{uid}"

    extra_host_config = Dict(
        help="""Extra docker HostConfig arguments (docker SDK names, e.g. ``{"cpuset_cpus":
        "0-3"}``), applied last: they can override the hardening, so review them.""",
    ).tag(config=True)

    extra_create_kwargs = Dict(
        help="Extra arguments for the docker SDK's create_container (e.g. ``hostname``).",
    ).tag(config=True)

    remove = Bool(
        True,
        help="""Remove the container once it stopped (its logs go with it). The spawner
        removes it itself after reading its exit status, rather than docker's AutoRemove,
        which would lose the status and the out-of-memory flag.""",
    ).tag(config=True)

    name_template = Unicode(
        "phoebe-{username}-{session_id}",
        help="""Container names: ``{username}``, ``{user_id}`` and ``{session_id}`` are
        escaped so names are docker-safe and distinct users never collide. Must contain
        ``{session_id}``.""",
    ).tag(config=True)

    @validate("name_template")
    def _validate_name_template(self, proposal: dict[str, Any]) -> str:
        value = str(proposal["value"])
        if "{session_id}" not in value:
            raise TraitError("name_template must contain {session_id} to be collision-free")
        return value

    stop_timeout = Float(
        5.0, help="Seconds docker waits after SIGTERM before SIGKILL when stopping."
    ).tag(config=True)

    # --- the engine --------------------------------------------------------------------
    docker_host = Unicode(
        "",
        help="""The engine's address (``unix:///var/run/docker.sock``, ``tcp://host:2376``).
        Empty: the standard DOCKER_HOST / DOCKER_TLS_VERIFY / DOCKER_CERT_PATH variables.""",
    ).tag(config=True)
    tls_verify = Bool(False, help="Verify the engine's TLS certificate (tcp docker_host).").tag(
        config=True
    )
    tls_ca = Unicode("", help="CA certificate file for the engine's TLS.").tag(config=True)
    tls_cert = Unicode("", help="Client certificate file for the engine's TLS.").tag(config=True)
    tls_key = Unicode("", help="Client key file for the engine's TLS.").tag(config=True)
    docker_timeout = Float(60.0, help="Seconds one docker API call may take.").tag(config=True)

    ready_check_interval = Float(
        0.02, help="How often start() looks for the worker's ready file."
    ).tag(config=True)

    # --- defaults that differ from the local backend ----------------------------------------

    @default("cmd")
    def _default_cmd(self) -> list[str]:
        return ["python", "-m", "phoebe_kernel_worker"]

    @default("env_keep")
    def _default_env_keep(self) -> list[str]:
        # host paths (PATH, PYTHONPATH, VIRTUAL_ENV, PHOEBE_PBDIR) mean nothing inside the
        # image; the numerical libraries' settings do (the container runs on this CPU)
        phoebe = [p for p in PHOEBE_ENV if p != "PHOEBE_PBDIR"]
        return ["LANG", "LC_ALL", "TZ", *phoebe, *NUMERICAL_ENV]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.container_id: str | None = None
        self.container_name: str | None = None
        self.host_run_dir: str | None = None
        self.exit_status: int | None = None
        self._exit_reason: str | None = None
        self._engine_error: str | None = None
        self._stop_lock = asyncio.Lock()
        self._starting = False  # poll() is None while pulling/creating, before an id exists

    # --- the engine: one connection per hub -------------------------------------------------

    @classmethod
    async def start_backend(cls, parent: Any, runtime_dir: str) -> EngineConnection:
        """The hub's connection to the engine (``docker_host``, TLS, ``docker_timeout``);
        nothing talks to the engine until the first session needs it."""
        proto = cls(parent=parent)
        return EngineConnection(
            proto.docker_host,
            tls_verify=proto.tls_verify,
            tls_ca=proto.tls_ca,
            tls_cert=proto.tls_cert,
            tls_key=proto.tls_key,
            timeout=proto.docker_timeout,
        )

    @classmethod
    async def stop_backend(cls, backend: Any) -> None:
        if isinstance(backend, EngineConnection):
            await backend.close()

    @property
    def engine(self) -> EngineConnection:
        """The hub's :class:`EngineConnection` (this spawner's ``backend``)."""
        if not isinstance(self.backend, EngineConnection):
            raise RuntimeError("no engine: backend must be DockerSpawner.start_backend()'s")
        return self.backend

    # --- start --------------------------------------------------------------------------

    async def start(self) -> WorkerEndpoint:
        self._starting = True
        try:
            return await self._start()
        finally:
            self._starting = False

    async def _start(self) -> WorkerEndpoint:
        if not self.runtime_dir:
            raise SpawnError("no runtime directory was assigned to this session")
        if self.allowed_images and self.image not in self.allowed_images:
            raise SpawnError(f"image {self.image!r} is not in the allowed images")
        transport = self._transport()
        self.exit_status = None
        self._exit_reason = None
        try:
            self.container_name = layout.container_name(
                self.name_template,
                username=str(self.user.get("name") or self.user.get("user_id") or "anonymous"),
                user_id=str(self.user.get("user_id") or ""),
                session_id=self.session_id,
            )
            fields = {
                "username": str(self.user.get("name") or ""),
                "user_id": str(self.user.get("user_id") or ""),
                "session_id": self.session_id,
            }
            binds = layout.render_volumes(self.volumes, fields)
        except (ValueError, KeyError) as e:
            raise SpawnError(f"invalid docker configuration: {e}") from None
        self.emit_progress(5, f"Preparing the session for image {self.image}")
        try:
            self._prepare_files(transport)
        except OSError as e:
            raise SpawnError(f"could not prepare the session's files: {e.strerror}") from None
        try:
            await self._ensure_image()
            deadline = time.monotonic() + self.start_timeout
            self.emit_progress(40, "Creating the container")
            self.container_id = await self.engine.run(self._create, binds)
            self.emit_progress(55, f"Starting container {self.container_name}")
            await self.engine.api("start", self.container_id)
        except BaseException as e:
            await self._abort()
            if isinstance(e, engine_errors()):
                raise SpawnError(f"docker could not start the worker: {explain(e)}") from None
            raise
        self.emit_progress(70, "Container started, loading PHOEBE")
        try:
            report = await self._wait_ready(deadline)
            endpoints, _pid = endpoints_from_json(report)
            endpoint = await self._host_endpoint(endpoints, transport)
        except BaseException as e:
            await self._abort()
            if isinstance(e, ValueError):
                raise SpawnError("worker wrote a malformed ready file") from None
            raise
        self.emit_progress(100, "Worker ready", done=True)
        self.log.debug(
            "container %s for session %s ready: %s",
            self.container_name,
            self.session_id,
            endpoint,
        )
        return endpoint

    def _transport(self) -> str:
        try:
            return layout.choose_transport(str(self.transport), self._network())
        except ValueError as e:
            raise SpawnError(str(e)) from None

    def _network(self) -> str:
        return self.network_name or self.network_mode or "none"

    def _prepare_files(self, transport: str) -> None:
        """The host side of the session's mounts and the 0600 connection file in it."""
        uid, _, gid = self.container_user.partition(":")
        try:
            run_dir = layout.prepare_mounts(
                runtime_dir=self.runtime_dir,
                session_dir=self.session_dir,
                owner=(int(uid), int(gid or uid)),
                ipc=transport == "ipc",
                fallback_root=self.ipc_fallback_root,
                session_id=self.session_id,
            )
        except ValueError as e:
            raise SpawnError(str(e)) from None
        self.host_run_dir = str(run_dir)
        info = self.connection_info(
            session_dir=self.session_mount,
            transport=transport,
            ipc_dir=self.runtime_mount,
        )
        info.exit_with_parent = False  # the worker's parent is the container's init
        if transport == "tcp":
            info.ip = self.ip if self._network() == "host" else "0.0.0.0"  # noqa: S104
        path = run_dir / "connection.json"
        self.write_connection_file(str(path), info)
        if os.geteuid() == 0:
            os.chown(path, int(uid), int(gid or uid))

    async def _ensure_image(self) -> None:
        if self.pull_policy != "always" and await self.engine.has_image(self.image):
            return
        if self.pull_policy == "never":
            raise SpawnError(f"image {self.image!r} is not present and pull_policy is 'never'")
        self.emit_progress(20, f"Pulling image {self.image}")
        try:
            await asyncio.wait_for(self.engine.pull(self.image), timeout=self.pull_timeout)
        except TimeoutError:
            raise SpawnError(f"pulling {self.image} took over {self.pull_timeout:g} s") from None

    def _create(self, binds: list[str]) -> str:
        """Create the container (blocking; runs on the engine's threads); returns its id."""
        assert self.host_run_dir is not None
        api = self.engine.client.api
        mounts = [
            f"{self.host_run_dir}:{self.runtime_mount}:rw",
            f"{self.session_dir}:{self.session_mount}:rw",
            *binds,
        ]
        host_config = layout.hardened_host_config(
            mounts=mounts,
            network=self._network(),
            tmpfs_size=int(self.tmpfs_size or 0),
            pids_limit=self.pids_limit,
            mem_limit=self.mem_limit,
            cpu_limit=self.cpu_limit,
            extra=self.extra_host_config,
        )
        spec = layout.container_spec(
            image=self.image,
            command=[*self.cmd, *self.worker_args],
            runtime_mount=self.runtime_mount,
            name=self.container_name,
            user=self.container_user,
            environment=self.get_env(),
            working_dir=self.session_mount,
            labels={
                layout.LABEL_SESSION: self.session_id,
                layout.LABEL_USER: str(self.user.get("user_id") or ""),
            },
        )
        spec["host_config"] = api.create_host_config(**host_config)
        spec.update(self.extra_create_kwargs)
        return str(api.create_container(**spec)["Id"])

    def get_env(self) -> dict[str, str]:
        """The container's environment: the base allow-list plus a writable HOME."""
        env = super().get_env()
        env.setdefault("HOME", layout.CONTAINER_TMP)
        return env

    async def _wait_ready(self, deadline: float) -> bytes:
        """The worker's ready file, once written; SpawnError if the container dies first
        or the deadline passes."""
        assert self.host_run_dir is not None
        assert self.container_id is not None
        ready = str(Path(self.host_run_dir) / "ready.json")
        try:
            return await self.engine.wait_for_file(
                self.container_id, ready, deadline=deadline, interval=self.ready_check_interval
            )
        except ContainerGone as gone:
            raise SpawnError(await self._start_failure(gone.state)) from None
        except TimeoutError:
            limit = f"{self.start_timeout:g} s"
            raise SpawnError(f"worker did not become ready within {limit}") from None

    async def _start_failure(self, state: dict[str, Any] | None) -> str:
        if state is None:
            return "the worker's container disappeared while starting"
        self._record_exit(state)
        assert self.container_id is not None
        tail = await self.engine.last_log_line(self.container_id, LOG_TAIL_LINES)
        what = f"{self._exit_reason or describe_exit(state)} while starting"
        return f"{what}: {tail[-300:]}" if tail else what

    async def _host_endpoint(self, endpoints: dict[str, str], transport: str) -> WorkerEndpoint:
        """Map the endpoints the worker bound inside the container to what the hub dials."""
        assert self.host_run_dir is not None
        assert self.container_id is not None
        cid = self.container_id
        try:
            if transport == "ipc":
                return layout.ipc_endpoint(endpoints, self.runtime_mount, self.host_run_dir)
            network = self._network()
            host = self.ip if network == "host" else await self.engine.address(cid, network)
            if not host:
                raise SpawnError(f"the container has no address on network {network!r}")
            return layout.tcp_endpoint(endpoints, host)
        except ValueError as e:  # an endpoint the hub did not derive itself
            raise SpawnError(str(e)) from None

    async def _abort(self) -> None:
        """Clean up after a failed start: the container goes whatever ``remove`` says."""
        with contextlib.suppress(Exception):
            await self._stop_container(now=True, remove=True)
        if self.exit_status is None:
            self.exit_status = 1
        self._finish()

    # --- poll / stop ------------------------------------------------------------------------

    async def _inspect_state(self) -> dict[str, Any] | None:
        """The container's ``State``, or None if it no longer exists."""
        assert self.container_id is not None
        return await self.engine.state(self.container_id)

    def _record_exit(self, state: dict[str, Any]) -> None:
        if self.exit_status is None:
            self.exit_status, self._exit_reason = container_exit(state, self.mem_limit)

    async def poll(self) -> int | None:
        if self._starting and self.exit_status is None and self.container_id is None:
            return None
        if self.exit_status is not None or self.container_id is None:
            return self.exit_status if self.exit_status is not None else 0
        try:
            state = await self._inspect_state()
        except engine_errors() as e:
            reason = explain(e)
            if reason != self._engine_error:  # once per distinct problem, not every poll
                self.log.warning("cannot poll container %s: %s", self.container_name, reason)
                self._engine_error = reason
            return None  # the engine is unreachable; the worker may well be fine
        self._engine_error = None
        if state is None:
            self.exit_status = 1
            self._exit_reason = (
                f"worker container {self.container_name} was removed outside the hub"
            )
        elif state.get("Status") in ALIVE_STATES:
            return None
        else:
            self._record_exit(state)
        return self.exit_status

    def exit_reason(self, status: int) -> str | None:
        return self._exit_reason

    async def stop(self, now: bool = False) -> None:
        await self._stop_container(now=now, remove=self.remove)
        self._finish()

    async def _stop_container(self, *, now: bool, remove: bool) -> None:
        if self.container_id is None:
            await self._remove_unrecorded()
            return
        async with self._stop_lock:
            cid = self.container_id
            state = await self._inspect_state()
            if state is not None and state.get("Status") in ALIVE_STATES:
                await self.engine.halt(cid, now=now, stop_timeout=self.stop_timeout)
                state = await self._inspect_state()
            if state is not None:
                self._record_exit(state)
            elif self.exit_status is None:
                self.exit_status = 1
            if remove and state is not None:
                await self.engine.remove(cid)

    async def _remove_unrecorded(self) -> None:
        """Remove containers of this session the hub never recorded (it died mid-start).

        Found by the session label this spawner set itself, never by name or command
        line; only when the spawner holds no container id and is not starting one.
        """
        if self._starting or not self.session_id:
            return
        try:
            for cid in await self.engine.labelled(layout.LABEL_SESSION, self.session_id):
                self.log.warning(
                    "removing unrecorded container %s of session %s", cid[:12], self.session_id
                )
                await self.engine.remove(cid)
        except engine_errors() as e:
            self.log.warning(
                "cannot look for containers of session %s: %s", self.session_id, explain(e)
            )

    def _finish(self) -> None:
        if self.host_run_dir:
            (Path(self.host_run_dir) / "connection.json").unlink(missing_ok=True)

    # --- state ------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.container_id is not None:
            state.update(
                container_id=self.container_id,
                container_name=self.container_name,
                host_run_dir=self.host_run_dir,
                runtime_dir=self.runtime_dir,
            )
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        if state.get("container_id"):
            self.container_id = str(state["container_id"])
            self.container_name = state.get("container_name")
            self.host_run_dir = state.get("host_run_dir")
            self.runtime_dir = state.get("runtime_dir") or self.runtime_dir

    def clear_state(self) -> None:
        super().clear_state()
        # the short ipc directory too, even when it was never recorded (a hub that died
        # mid-start): its path follows from the session id alone
        fallback = str(Path(self.ipc_fallback_root) / self.session_id) if self.session_id else ""
        for path in (self.host_run_dir, self.runtime_dir, fallback):
            if path:
                shutil.rmtree(path, ignore_errors=True)
        self.container_id = None
        self.container_name = None
        self.host_run_dir = None
        self.exit_status = None
        self._exit_reason = None
