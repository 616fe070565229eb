"""Talking to the Docker engine without blocking the hub's event loop.

Every docker SDK call blocks (HTTP over the engine's socket), so the Docker backend
makes them through one :class:`EngineConnection`: a docker client and a small thread
pool of its own, so a slow engine never starves the loop's default executor, which
other services use. :meth:`DockerSpawner.start_backend
<phoebe_spawner.spawners.docker.spawner.DockerSpawner.start_backend>` creates it once per
hub, every spawner of that hub receives it as ``Spawner.backend``, and
``stop_backend`` closes it. The helpers below read what the engine answers: its errors
and the exit codes of containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: Threads for blocking docker SDK calls, shared by every spawner of one hub.
ENGINE_THREADS = 8
#: Container states in which the worker is (still) there.
ALIVE_STATES = ("created", "running", "paused", "restarting")
#: Seconds between looks at the container while waiting for a file.
STATE_CHECK_INTERVAL = 0.25


class ContainerGone(Exception):
    """The container exited or was removed while :meth:`EngineConnection.wait_for_file`
    waited; ``state`` is its last ``State``, or None when it no longer exists."""

    def __init__(self, state: dict[str, Any] | None) -> None:
        super().__init__("the container is gone" if state is None else "the container exited")
        self.state = state


class EngineConnection:
    """One hub's connection to one Docker engine: a client and the threads that use it.

    ``base_url`` empty means the standard ``DOCKER_HOST``/``DOCKER_TLS_VERIFY``/
    ``DOCKER_CERT_PATH`` environment. Nothing talks to the engine until the first call:
    making the client asks the engine for its API version, so it happens in a pool
    thread on first use, never on the event loop and never during hub start-up.
    """

    def __init__(
        self,
        base_url: str = "",
        *,
        tls_verify: bool = False,
        tls_ca: str = "",
        tls_cert: str = "",
        tls_key: str = "",
        timeout: float = 60.0,
        threads: int = ENGINE_THREADS,
    ) -> None:
        self.base_url = base_url
        self.tls_verify = tls_verify
        self.tls_ca = tls_ca
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="docker")
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._closed = False

    @property
    def client(self) -> Any:
        """The ``docker.DockerClient`` (blocking: use it in :meth:`run` callables only).

        Made on first use; the SDK's connection pool is safe to share across threads.
        """
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> Any:
        import docker

        if not self.base_url:
            return docker.from_env(timeout=int(self.timeout), version="auto")
        tls: Any = False
        if self.tls_verify or self.tls_cert:
            tls = docker.tls.TLSConfig(
                client_cert=(self.tls_cert, self.tls_key) if self.tls_cert else None,
                ca_cert=self.tls_ca or None,
                verify=self.tls_ca if (self.tls_verify and self.tls_ca) else self.tls_verify,
            )
        return docker.DockerClient(
            base_url=self.base_url, tls=tls, timeout=int(self.timeout), version="auto"
        )

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking callable on the engine's threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def api(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``docker.APIClient.<method>`` on the engine's threads.

        The client is looked up (and on first use made) in the thread too.
        """

        def call() -> Any:
            return getattr(self.client.api, method)(*args, **kwargs)

        return await self.run(call)

    # --- what the Docker backend asks of the engine -------------------------------------

    async def has_image(self, image: str) -> bool:
        """Whether ``image`` is present in the engine."""
        import docker.errors

        try:
            await self.api("inspect_image", image)
        except docker.errors.ImageNotFound:
            return False
        return True

    async def pull(self, image: str) -> None:
        """Pull ``image`` (``repo:tag`` or ``repo@digest``) from its registry."""
        repo, tag = split_image(image)
        await self.api("pull", repo, tag=tag)

    async def state(self, container_id: str) -> dict[str, Any] | None:
        """The container's ``State`` (``Status``, ``ExitCode``, ``OOMKilled``...), or None
        if it no longer exists."""
        import docker.errors

        try:
            attrs = await self.api("inspect_container", container_id)
        except docker.errors.NotFound:
            return None
        return dict(attrs.get("State") or {})

    async def address(self, container_id: str, network: str) -> str | None:
        """The container's IP address on ``network``, or None if it has none."""
        attrs = await self.api("inspect_container", container_id)
        networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
        address = (networks.get(network) or {}).get("IPAddress")
        return str(address) if address else None

    async def last_log_line(self, container_id: str, tail: int = 20) -> str:
        """The last non-empty line of the container's output ("" if there is none or the
        engine cannot say)."""
        try:
            raw = await self.api("logs", container_id, tail=tail, timestamps=False)
        except engine_errors():
            return ""
        lines = [ln.strip() for ln in raw.decode("utf-8", "replace").splitlines() if ln.strip()]
        return lines[-1] if lines else ""

    async def wait_for_file(
        self, container_id: str, path: str, *, deadline: float, interval: float
    ) -> bytes:
        """The content of ``path`` (on the hub's side of a bind mount) once the container
        has written it, looking every ``interval`` s until ``deadline`` (``time.monotonic``;
        TimeoutError after it) and at the container every few looks: raises
        :class:`ContainerGone` if it is no longer alive."""
        next_check = time.monotonic() + STATE_CHECK_INTERVAL
        while True:
            content = _read_if_written(path)
            if content is not None:
                return content
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError(f"{path} was not written in time")
            if now >= next_check:
                next_check = now + STATE_CHECK_INTERVAL
                state = await self.state(container_id)
                if state is None or state.get("Status") not in ALIVE_STATES:
                    raise ContainerGone(state)
            await asyncio.sleep(interval)

    async def halt(self, container_id: str, *, now: bool, stop_timeout: float) -> None:
        """Stop a container (SIGTERM, SIGKILL after ``stop_timeout``; at once with
        ``now``) and wait until it has exited; one already gone or stopped is fine."""
        import docker.errors

        try:
            if now:
                await self.api("kill", container_id, signal="SIGKILL")
            else:
                await self.api("stop", container_id, timeout=int(stop_timeout))
            await self.api("wait", container_id, timeout=self.timeout)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if "is not running" not in str(e):
                raise

    async def remove(self, container_id: str) -> None:
        """Remove a container and its anonymous volumes (gone already is fine)."""
        import docker.errors

        with contextlib.suppress(docker.errors.NotFound):
            await self.api("remove_container", container_id, force=True, v=True)

    async def labelled(self, label: str, value: str) -> list[str]:
        """The ids of every container (running or not) whose ``label`` is ``value``."""
        filters = {"label": f"{label}={value}"}
        found = await self.api("containers", all=True, quiet=True, filters=filters)
        return [str(c["Id"]) for c in found]

    async def close(self) -> None:
        """Let running calls finish, then close the client (idempotent); called by
        ``DockerSpawner.stop_backend`` at hub shutdown."""
        if self._closed:
            return
        self._closed = True

        def shut() -> None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            with self._client_lock:
                if self._client is not None:
                    self._client.close()
                    self._client = None

        await asyncio.to_thread(shut)


def _read_if_written(path: str) -> bytes | None:
    """The file's content, or None while it does not exist. A stat of a small local file,
    done on the loop: cheaper than a thread hop every ``ready_check_interval``."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None


def engine_errors() -> tuple[type[BaseException], ...]:
    """What a docker SDK call raises when the engine refuses or cannot be reached."""
    import docker.errors
    import requests.exceptions

    return (docker.errors.DockerException, requests.exceptions.RequestException)


def explain(error: BaseException) -> str:
    """A one-line reason from a docker SDK error (the engine's explanation if it gave one)."""
    explanation = getattr(error, "explanation", None)
    text = str(explanation or error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


def status_from_exit_code(code: int) -> int:
    """Docker's exit code -> the spawner contract's status (negative for signals).

    The init process reports a worker killed by signal N as ``128 + N``, like a shell;
    the contract (and :func:`phoebe_spawner.sessions.session.describe_exit`) wants ``-N``.
    """
    if 128 < code < 128 + 65:
        try:
            return -int(signal.Signals(code - 128))
        except ValueError:
            return code
    return code


def container_exit(state: dict[str, Any], mem_limit: int | None) -> tuple[int, str | None]:
    """The contract's exit status of an exited container (from its ``State``), and why it
    exited when docker knows more than the status says (killed for memory over
    ``mem_limit``, or a container the engine could not run)."""
    status = status_from_exit_code(int(state.get("ExitCode") or 0))
    if state.get("OOMKilled"):
        limit = f" (limit {mem_limit / 1024**2:.0f} MiB)" if mem_limit else ""
        return status, f"worker was killed: out of memory{limit}"
    if status == 0 and state.get("Error"):
        return 1, f"worker container failed: {str(state['Error'])[:200]}"
    return status, None


def describe_exit(state: dict[str, Any]) -> str:
    """How an exited container's worker ended, from its ``State``: killed by which
    signal, or exited with which status."""
    status = status_from_exit_code(int(state.get("ExitCode", 1)))
    if status < 0:
        return f"worker was killed by {signal.Signals(-status).name}"
    return f"worker exited with status {status}"


def split_image(image: str) -> tuple[str, str]:
    """``"repo/name:tag"`` -> (``"repo/name"``, ``"tag"``) for a pull; digests and
    registry ports handled."""
    if "@" in image:
        repo, _, digest = image.partition("@")
        return repo, digest
    repo, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return image, "latest"
    return repo, tag
