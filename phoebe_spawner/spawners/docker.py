"""DockerSpawner: one hardened container per session, driven through the docker SDK.

Selected with ``PhoebeSpawnerApp.spawner_class = "docker"``; the session manager is its
only caller. Every docker SDK call blocks, so each runs on a small thread pool
(:data:`~phoebe_spawner.spawners.docker_support.EXECUTOR`), never on the event loop.

How a session's container is laid out (``docs/docker.md`` has the full picture)::

    host                                       container
    <runtime_dir>/c/  (0700, container uid) -> /run/phoebe      connection file, ready file,
                                                                ipc sockets
    <session_dir>     (0700, container uid) -> /srv/phoebe/session   the worker's files
    tmpfs                                      /tmp             HOME, caches
    everything else                            read-only image

The signing key reaches the worker only in ``/run/phoebe/connection.json`` (0600, owned
by the container's user): never through the environment or the command line, so
``docker inspect`` never shows it. The worker reports its bound endpoints in
``/run/phoebe/ready.json`` (``--ready-file``). With the default ``network_mode="none"``
the worker binds ZeroMQ ``ipc://`` sockets in ``/run/phoebe`` and the hub connects to
the same sockets through the host side of that bind mount, so a container needs no
network at all. On a user-defined network (``network_name``) or the host network the
worker binds TCP instead and the hub connects to the container's address on that
network (or to ``ip`` on the host network); no port is ever published on the host's
interfaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from phoebe_kernel_worker.protocol import endpoints_from_json

from ..channels import WorkerEndpoint
from . import docker_support as ds
from .base import SpawnError
from .docker_config import DockerSpawnerConfig

T = TypeVar("T")

#: Container states in which the worker is (still) there.
ALIVE_STATES = ("created", "running", "paused", "restarting")
#: Unix socket paths are limited to 108 bytes; stay clear of the limit.
MAX_IPC_PATH = 100
LOG_TAIL_LINES = 20
#: The container's private tmpfs (not the host's /tmp): HOME and caches live there.
CONTAINER_TMP = "/tmp"  # noqa: S108


class DockerSpawner(DockerSpawnerConfig):
    """Start each worker in its own container (``spawner_class = "docker"``)."""

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

    # --- calling the SDK off the loop -------------------------------------------------------

    @property
    def client(self) -> Any:
        """The shared docker client (blocking: use from :meth:`_run` callables only)."""
        return ds.get_client(
            self.docker_host,
            tls_verify=self.tls_verify,
            tls_ca=self.tls_ca,
            tls_cert=self.tls_cert,
            tls_key=self.tls_key,
            timeout=self.docker_timeout,
        )

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking callable on the docker thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(ds.EXECUTOR, functools.partial(fn, *args, **kwargs))

    async def _api(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``docker.APIClient.<method>`` on the docker threads.

        The client is looked up (and on first use made, which talks to the engine) in
        the thread too, never on the event loop.
        """

        def call() -> Any:
            return getattr(self.client.api, method)(*args, **kwargs)

        return await self._run(call)

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
            self.container_name = ds.container_name(
                self.name_template,
                username=str(self.user.get("name") or self.user.get("user_id") or "anonymous"),
                user_id=str(self.user.get("user_id") or ""),
                session_id=self.session_id,
            )
            binds = self._binds()
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
            self.container_id = await self._run(self._create, binds)
            self.emit_progress(55, f"Starting container {self.container_name}")
            await self._api("start", self.container_id)
        except ds.engine_errors() as e:
            await self._abort()
            raise SpawnError(f"docker could not start the worker: {ds.explain(e)}") from None
        except BaseException:
            await self._abort()
            raise
        self.emit_progress(70, "Container started, loading PHOEBE")
        try:
            report = await self._wait_ready(deadline)
            endpoints, _pid = endpoints_from_json(report)
            endpoint = await self._host_endpoint(endpoints, transport)
        except SpawnError:
            await self._abort()
            raise
        except ValueError:
            await self._abort()
            raise SpawnError("worker wrote a malformed ready file") from None
        except BaseException:
            await self._abort()
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
        if self.transport != "auto":
            chosen = str(self.transport)
        else:
            chosen = "ipc" if self._network() == "none" else "tcp"
        if chosen == "tcp" and self._network() == "none":
            raise SpawnError("transport 'tcp' needs a network: set network_name or network_mode")
        return chosen

    def _network(self) -> str:
        return self.network_name or self.network_mode or "none"

    def _binds(self) -> list[str]:
        fields = {
            "username": str(self.user.get("name") or ""),
            "user_id": str(self.user.get("user_id") or ""),
            "session_id": self.session_id,
        }
        return ds.render_volumes(self.volumes, fields)

    def _uid_gid(self) -> tuple[int, int]:
        uid, _, gid = self.container_user.partition(":")
        return int(uid), int(gid or uid)

    def _prepare_files(self, transport: str) -> None:
        """The session dir, the runtime mount and the 0600 connection file (local disk).

        Both directories belong to the container's user (the hub is root, or is that
        user), so the worker can write them and nobody else on the host can read them.
        """
        uid, gid = self._uid_gid()
        if os.geteuid() not in (0, uid):
            raise SpawnError(
                f"the hub (uid {os.geteuid()}) cannot hand files to container uid {uid}: "
                "run the hub as root or set DockerSpawner.container_user to the hub's uid"
            )
        Path(self.runtime_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        run_dir = Path(self.runtime_dir) / "c"
        if transport == "ipc" and len(str(run_dir / "control")) > MAX_IPC_PATH:
            run_dir = self._short_run_dir()
        run_dir.mkdir(mode=0o700, exist_ok=True)
        for stale in ("ready.json", *("shell", "control", "iopub")):
            (run_dir / stale).unlink(missing_ok=True)
        session_dir = Path(self.session_dir)
        session_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(run_dir, uid, gid)
            os.chown(session_dir, uid, gid)
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
            os.chown(path, uid, gid)

    def _short_run_dir(self) -> Path:
        """A runtime mount under ``ipc_fallback_root``, for data dirs with long paths."""
        root = Path(self.ipc_fallback_root)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = root.lstat()
        if st.st_uid != os.geteuid() or (st.st_mode & 0o077) or root.is_symlink():
            raise SpawnError(f"{root} must be a directory owned by the hub with mode 0700")
        run_dir = root / self.session_id
        if len(str(run_dir / "control")) > MAX_IPC_PATH:
            raise SpawnError(f"ipc_fallback_root {root} is too long for Unix sockets")
        return run_dir

    async def _ensure_image(self) -> None:
        import docker.errors

        present = True
        if self.pull_policy != "always":
            try:
                await self._api("inspect_image", self.image)
            except docker.errors.ImageNotFound:
                present = False
        if present and self.pull_policy != "always":
            return
        if self.pull_policy == "never":
            raise SpawnError(f"image {self.image!r} is not present and pull_policy is 'never'")
        self.emit_progress(20, f"Pulling image {self.image}")
        repo, tag = ds.split_image(self.image)
        try:
            await asyncio.wait_for(self._api("pull", repo, tag=tag), timeout=self.pull_timeout)
        except TimeoutError:
            raise SpawnError(f"pulling {self.image} took over {self.pull_timeout:g} s") from None

    def _create(self, binds: list[str]) -> str:
        """Create the container (blocking; runs on the docker threads); returns its id."""
        assert self.host_run_dir is not None
        api = self.client.api
        network = self._network()
        host_config: dict[str, Any] = {
            "binds": [
                f"{self.host_run_dir}:{self.runtime_mount}:rw",
                f"{self.session_dir}:{self.session_mount}:rw",
                *binds,
            ],
            "network_mode": network,
            "read_only": True,
            "tmpfs": {CONTAINER_TMP: f"rw,nosuid,nodev,size={self.tmpfs_size}"},
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "init": True,
            "pids_limit": self.pids_limit or None,
            "ipc_mode": "private",
        }
        if self.mem_limit:
            host_config["mem_limit"] = self.mem_limit
            host_config["memswap_limit"] = self.mem_limit  # no swap beyond the limit
        if self.cpu_limit:
            host_config["nano_cpus"] = int(self.cpu_limit * 1e9)
        host_config.update(self.extra_host_config)
        env = self.get_env()
        kwargs: dict[str, Any] = {
            "image": self.image,
            "command": [
                *self.cmd,
                *self.worker_args,
                "--connection-file",
                f"{self.runtime_mount}/connection.json",
                "--ready-file",
                f"{self.runtime_mount}/ready.json",
            ],
            "name": self.container_name,
            "user": self.container_user,
            "environment": env,
            "working_dir": self.session_mount,
            "labels": {
                ds.LABEL_SESSION: self.session_id,
                ds.LABEL_USER: str(self.user.get("user_id") or ""),
            },
            "stop_signal": "SIGTERM",
            "host_config": api.create_host_config(**host_config),
        }
        kwargs.update(self.extra_create_kwargs)
        return str(api.create_container(**kwargs)["Id"])

    def get_env(self) -> dict[str, str]:
        """The container's environment: the base allow-list plus a writable HOME."""
        env = super().get_env()
        env.setdefault("HOME", CONTAINER_TMP)
        return env

    async def _wait_ready(self, deadline: float) -> bytes:
        """Wait for the ready file, watching the container for an early death."""
        assert self.host_run_dir is not None
        ready = Path(self.host_run_dir) / "ready.json"
        next_check = time.monotonic() + 0.25
        while True:
            if ready.exists():
                return ready.read_bytes()
            now = time.monotonic()
            if now >= deadline:
                raise SpawnError(f"worker did not become ready within {self.start_timeout:g} s")
            if now >= next_check:
                next_check = now + 0.25
                state = await self._inspect_state()
                if state is None or state.get("Status") not in ALIVE_STATES:
                    raise SpawnError(await self._start_failure(state))
            await asyncio.sleep(self.ready_check_interval)

    async def _start_failure(self, state: dict[str, Any] | None) -> str:
        if state is None:
            return "the worker's container disappeared while starting"
        self._record_exit(state)
        tail = await self._logs_tail()
        if self._exit_reason:
            what = f"{self._exit_reason} while starting"
        else:
            code = state.get("ExitCode", 1)
            status = ds.status_from_exit_code(int(code))
            if status < 0:
                what = f"worker was killed by {signal.Signals(-status).name} while starting"
            else:
                what = f"worker exited with status {status} while starting"
        return f"{what}: {tail[-300:]}" if tail else what

    async def _logs_tail(self) -> str:
        """The last line of the worker's output (for failure reasons)."""

        if self.container_id is None:
            return ""
        try:
            raw = await self._api("logs", self.container_id, tail=LOG_TAIL_LINES, timestamps=False)
        except ds.engine_errors():
            return ""
        lines = [ln.strip() for ln in raw.decode("utf-8", "replace").splitlines() if ln.strip()]
        return lines[-1] if lines else ""

    async def _host_endpoint(self, endpoints: dict[str, str], transport: str) -> WorkerEndpoint:
        """Map the endpoints the worker bound inside the container to what the hub dials."""
        assert self.host_run_dir is not None
        out: dict[str, str] = {}
        # the hub dials only addresses it derives itself: a channel's own socket in the
        # runtime mount, or a port on the container's address
        if transport == "ipc":
            for ch, url in endpoints.items():
                if url != f"ipc://{self.runtime_mount}/{ch}":
                    raise SpawnError(f"worker bound {ch} on an unexpected endpoint {url}")
                out[ch] = f"ipc://{self.host_run_dir}/{ch}"
            return WorkerEndpoint(**out)
        host = self.ip if self._network() == "host" else await self._container_address()
        for ch, url in endpoints.items():
            port = url.rsplit(":", 1)[-1]
            if not (url.startswith("tcp://") and port.isdigit()):
                raise SpawnError(f"worker bound {ch} on an unexpected endpoint {url}")
            out[ch] = f"tcp://{host}:{port}"
        return WorkerEndpoint(**out)

    async def _container_address(self) -> str:
        assert self.container_id is not None
        attrs = await self._api("inspect_container", self.container_id)
        networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
        address = (networks.get(self._network()) or {}).get("IPAddress")
        if not address:
            raise SpawnError(f"the container has no address on network {self._network()!r}")
        return str(address)

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
        import docker.errors

        assert self.container_id is not None
        try:
            attrs = await self._api("inspect_container", self.container_id)
        except docker.errors.NotFound:
            return None
        return dict(attrs.get("State") or {})

    def _record_exit(self, state: dict[str, Any]) -> None:
        if self.exit_status is not None:
            return
        self.exit_status = ds.status_from_exit_code(int(state.get("ExitCode") or 0))
        if state.get("OOMKilled"):
            limit = f" (limit {ds.mib(self.mem_limit)})" if self.mem_limit else ""
            self._exit_reason = f"worker was killed: out of memory{limit}"
        elif self.exit_status == 0 and state.get("Error"):
            self.exit_status = 1
            self._exit_reason = f"worker container failed: {str(state['Error'])[:200]}"

    async def poll(self) -> int | None:
        if self._starting and self.exit_status is None and self.container_id is None:
            return None
        if self.exit_status is not None or self.container_id is None:
            return self.exit_status if self.exit_status is not None else 0
        try:
            state = await self._inspect_state()
        except ds.engine_errors() as e:
            reason = ds.explain(e)
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
        import docker.errors

        if self.container_id is None:
            await self._remove_unrecorded()
            return
        async with self._stop_lock:
            cid = self.container_id
            state = await self._inspect_state()
            if state is not None and state.get("Status") in ALIVE_STATES:
                try:
                    if now:
                        await self._api("kill", cid, signal="SIGKILL")
                    else:
                        await self._api("stop", cid, timeout=int(self.stop_timeout))
                    await self._api("wait", cid, timeout=self.docker_timeout)
                except docker.errors.NotFound:
                    pass
                except docker.errors.APIError as e:
                    if "is not running" not in str(e):
                        raise
                state = await self._inspect_state()
            if state is not None:
                self._record_exit(state)
            elif self.exit_status is None:
                self.exit_status = 1
            if remove and state is not None:
                with contextlib.suppress(docker.errors.NotFound):
                    await self._api("remove_container", cid, force=True, v=True)

    async def _remove_unrecorded(self) -> None:
        """Remove containers of this session the hub never recorded (it died mid-start).

        Found by the session label this spawner set itself, never by name or command
        line; only when the spawner holds no container id and is not starting one.
        """
        if self._starting or not self.session_id:
            return
        try:
            found = await self._api(
                "containers",
                all=True,
                quiet=True,
                filters={"label": f"{ds.LABEL_SESSION}={self.session_id}"},
            )
            for container in found:
                self.log.warning(
                    "removing unrecorded container %s of session %s",
                    container["Id"][:12],
                    self.session_id,
                )
                await self._api("remove_container", container["Id"], force=True, v=True)
        except ds.engine_errors() as e:
            self.log.warning(
                "cannot look for containers of session %s: %s", self.session_id, ds.explain(e)
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
