"""A private Docker engine and a registry-free worker image for the docker test tier.

:class:`DockerEngine` starts ``dockerd`` (Debian package ``docker.io``; ``.ci/run``
installs it) with its own socket, data root, exec root and pid file, no iptables and no
default bridge, and stops it at the end of the run: containers removed (and counted,
so the suite fails if any test left one), the daemon stopped, whatever it left mounted
under its directories unmounted.

The daemon is started detached (``setsid --fork``), so neither it nor containerd nor
the containers' shims are children of the test process: the per-test leak check
(``tests/conftest.py``) compares child processes, and the engine may start in the
middle of the first docker test (the contract suite asks for it from a fixture). The
end-of-session teardown here is what cleans it up.

No registry is reachable in tests, so the worker image is imported from a tiny root
filesystem made here (``/etc/passwd``, ``/tmp``, mount points); the container gets the
host's ``/usr``, this interpreter's prefix, the virtual environment and the source
tree bind-mounted read-only at the same paths (all derived at run time), and runs the
same entry point as the production image: ``python -m phoebe_kernel_worker``.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import phoebe_kernel_worker

REPO_ROOT = Path(phoebe_kernel_worker.__file__).resolve().parents[1]
TEST_IMAGE = "phoebe-spawner-test-worker:latest"
CONTAINER_UID = 1000
MNT_DETACH = 2


class EngineUnavailable(Exception):
    """The engine cannot run here; ``str()`` is the skip reason."""


def find_dockerd() -> str | None:
    return shutil.which("dockerd") or (
        "/usr/sbin/dockerd" if os.path.exists("/usr/sbin/dockerd") else None
    )


def host_mounts() -> dict[str, str]:
    """Read-only bind mounts that let the test image run this interpreter and this tree."""
    paths = ["/usr", sys.base_prefix, sys.prefix, str(REPO_ROOT)]
    for path in list(paths):
        real = os.path.realpath(path)
        if real != path:
            paths.append(real)
    chosen: list[str] = []
    for path in sorted(set(paths), key=len):
        if not any(path == c or path.startswith(c.rstrip("/") + "/") for c in chosen):
            chosen.append(path)
    return {p: p for p in chosen}


def rootfs_tar() -> bytes:
    """A minimal root filesystem: users, a sticky /tmp, mount points, merged-/usr links."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add(name: str, *, mode: int = 0o755, data: bytes | None = None, link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.mode = mode
            info.mtime = int(time.time())
            if link:
                info.type, info.linkname = tarfile.SYMTYPE, link
            elif data is None:
                info.type = tarfile.DIRTYPE
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)

        for d in ("etc", "usr", "run", "proc", "sys", "dev", "srv", "sbin"):
            add(d)  # /sbin is real: docker mounts its init at /sbin/docker-init
        add("tmp", mode=0o1777)  # docker copies this mode onto the tmpfs it mounts here
        for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
            add(link, link=target)
        add(
            "etc/passwd",
            mode=0o644,
            data=(
                "root:x:0:0:root:/root:/bin/false\n"
                f"phoebe:x:{CONTAINER_UID}:{CONTAINER_UID}:phoebe:/tmp:/bin/false\n"
            ).encode(),
        )
        add("etc/group", mode=0o644, data=f"root:x:0:\nphoebe:x:{CONTAINER_UID}:\n".encode())
    return buf.getvalue()


class DockerEngine:
    """One private ``dockerd`` for the test run, and the test worker image."""

    def __init__(self, dockerd: str) -> None:
        self.dockerd = dockerd
        # short: the socket path must fit in 108 bytes, and dockerd nests deep below it
        self.base = Path(tempfile.mkdtemp(prefix="phs-dk-", dir="/tmp"))
        self.socket = self.base / "d.sock"
        self.pidfile = self.base / "d.pid"
        self.log = self.base / "dockerd.log"
        self.url = f"unix://{self.socket}"
        self.pid: int | None = None
        self.client: Any = None
        self.image = TEST_IMAGE
        self.network = f"phoebe-test-{os.getpid()}"
        self.volumes = host_mounts()

    def start(self, timeout: float = 60) -> None:
        """Start the daemon and build the image; raises :class:`EngineUnavailable`."""
        import docker

        argv = [
            self.dockerd,
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--storage-driver=overlay2",
            f"--data-root={self.base / 'data'}",
            f"--exec-root={self.base / 'exec'}",
            f"--pidfile={self.pidfile}",
            f"--host={self.url}",
        ]
        with open(self.log, "ab") as log:
            subprocess.run(
                ["setsid", "--fork", *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                check=True,
                timeout=10,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.pid is None and self.pidfile.exists():
                with contextlib.suppress(ValueError):
                    self.pid = int(self.pidfile.read_text().strip())
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(str(self.socket))
                # the client asks the engine for its API version when it is made
                client = docker.DockerClient(base_url=self.url, timeout=120)
                break
            except OSError:
                if time.monotonic() > deadline or (self.pid and not _alive(self.pid)):
                    self.stop()
                    raise EngineUnavailable(f"dockerd did not start: {self._log_tail()}") from None
                time.sleep(0.1)
        self.client = client
        self.pid = int(self.pidfile.read_text().strip())
        self.build_image()
        self.client.networks.create(self.network, driver="bridge", internal=True)

    def build_image(self) -> None:
        """Import the test worker image (no registry needed)."""
        venv_bin = str(Path(sys.prefix) / "bin")
        self.client.api.import_image_from_data(
            rootfs_tar(),
            repository=self.image.rsplit(":", 1)[0],
            tag="latest",
            changes=[
                f"ENV PATH={venv_bin}:/usr/local/bin:/usr/bin:/bin",
                f"ENV PYTHONPATH={REPO_ROOT}",
                f"USER {CONTAINER_UID}:{CONTAINER_UID}",
                'CMD ["python", "-m", "phoebe_kernel_worker", "--help"]',
            ],
        )

    def traits(self) -> dict[str, Any]:
        """DockerSpawner traits that run workers in this engine with the test image."""
        return {
            "docker_host": self.url,
            "image": self.image,
            "pull_policy": "never",
            "volumes": dict(self.volumes),
            "container_user": f"{CONTAINER_UID}:{CONTAINER_UID}",
        }

    def hub_config(self, *, phoebe: bool = False, **overrides: Any) -> dict[str, Any]:
        """``make_hub`` overrides for a hub whose sessions run in this engine.

        Without ``phoebe`` the workers run the fast fault-injecting test session.
        """
        config: dict[str, Any] = {"PhoebeSpawnerApp__spawner_class": "docker"}
        config.update({f"DockerSpawner__{k}": v for k, v in self.traits().items()})
        config["DockerSpawner__start_timeout"] = 90 if phoebe else 30
        if not phoebe:
            config["DockerSpawner__worker_args"] = [
                "--session-factory",
                "phoebe_kernel_worker.testing:test_session",
            ]
        config.update(overrides)
        return config

    def containers(self) -> list[Any]:
        return list(self.client.containers.list(all=True))

    def stop(self) -> list[str]:
        """Remove containers, stop the daemon, unmount and delete its directories.

        Returns the names of containers that were still there (tests left them).
        """
        leftovers: list[str] = []
        if self.client is not None:
            with contextlib.suppress(Exception):
                for container in self.containers():
                    leftovers.append(container.name)
                    container.remove(force=True)
            with contextlib.suppress(Exception):
                for net in self.client.networks.list(names=[self.network]):
                    net.remove()
            self.client.close()
            self.client = None
        if self.pid is None:  # a start that failed early: the daemon may still be coming up
            deadline = time.monotonic() + 5
            while self.pid is None and time.monotonic() < deadline:
                with contextlib.suppress(OSError, ValueError):
                    self.pid = int(self.pidfile.read_text().strip())
                time.sleep(0.1)
        if self.pid is not None and _alive(self.pid):
            os.kill(self.pid, signal.SIGTERM)
            if not _wait_gone(self.pid, 30):
                os.kill(self.pid, signal.SIGKILL)
                _wait_gone(self.pid, 10)
        self.pid = None
        unmount_below(self.base)
        shutil.rmtree(self.base, ignore_errors=True)
        return leftovers

    def _log_tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return " | ".join(lines[-3:])[-600:] or "no log"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def unmount_below(base: Path) -> None:
    """Lazily unmount every mount point under ``base``, deepest first."""
    libc = ctypes.CDLL(None, use_errno=True)
    prefix = str(base).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted({p for p in points if p.startswith(prefix)}, key=len, reverse=True):
        libc.umount2(point.encode(), MNT_DETACH)


def start_engine() -> DockerEngine:
    """Start the private engine; raises :class:`EngineUnavailable` with a skip reason."""
    dockerd = find_dockerd()
    if dockerd is None:
        raise EngineUnavailable(
            "Docker's engine is not installed (Debian package docker.io; .ci/run installs it)"
        )
    if os.geteuid() != 0:
        raise EngineUnavailable("a private dockerd needs root (rootless engines are not set up)")
    if shutil.which("setsid") is None:
        raise EngineUnavailable("setsid (util-linux) is needed to start dockerd detached")
    try:
        import docker  # noqa: F401
    except ImportError:
        raise EngineUnavailable("the docker SDK is not installed (pip install docker)") from None
    engine = DockerEngine(dockerd)
    try:
        engine.start()
    except EngineUnavailable:
        raise
    except Exception as e:
        engine.stop()
        raise EngineUnavailable(f"the private Docker engine failed: {e}") from None
    return engine


async def kill_container(spawner: Any, sig: str = "SIGKILL") -> None:
    """Kill a docker spawner's container with ``sig`` behind the spawner's back."""
    await spawner.engine.api("kill", spawner.container_id, signal=sig)
