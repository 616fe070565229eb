"""The production worker image (share/phoebe_spawner/docker/Dockerfile), built and run.

The Dockerfile starts ``FROM python:3.11-slim-bookworm``, which only Docker Hub serves,
and no Docker registry is reachable here (nor in CI). So the base is made locally as a
stand-in for it: a Debian bookworm root file system from Debian's own packages
(``debootstrap``, from the mirror apt is configured with) with Python 3.11, pip and the
user tools, where ``python`` and ``pip`` are on the PATH in ``/usr/local/bin`` and pip
may install system-wide, as in the official image, and the host's CA bundle is
trusted. It is imported into the private
engine under the official name (cached between runs in ``$XDG_CACHE_HOME``).

Then the Dockerfile is built unchanged (its build steps reach Debian and PyPI through
the host's network), with a build context holding what it copies (the worker
distribution's packaging and source: its first stage builds the wheel the image
installs), and the image runs a real PHOEBE session through the hub with nothing of
the host mounted in.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from ..docker_engine import REPO_ROOT

pytestmark = [pytest.mark.docker, pytest.mark.phoebe]

DOCKERFILE = REPO_ROOT / "share" / "phoebe_spawner" / "docker" / "Dockerfile"
BASE = ("python", "3.11-slim-bookworm")
IMAGE = "phoebe-spawner-worker:latest"  # what DockerSpawner.image names by default


def apt_mirror() -> str | None:
    """The Debian mirror apt uses for bookworm here (deb822 or one-line sources)."""
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if re.match(r"^\w+:", line)
            )
            suites = fields.get("Suites", "").split()
            if "bookworm" in suites and fields.get("URIs"):
                return fields["URIs"].split()[0]
    listing = Path("/etc/apt/sources.list")
    if listing.exists():
        for line in listing.read_text().splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == "bookworm":
                return words[1]
    return None


def base_tar() -> Path:
    """The stand-in base's root file system as a tar (made once, then cached)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "phoebe-spawner"
    tar = cache / "python-3.11-slim-bookworm-standin.tar"
    if tar.exists():
        return tar
    debootstrap = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin")
    if debootstrap is None:
        pytest.skip("debootstrap is not installed (Debian package; .ci/system-packages)")
    mirror = apt_mirror()
    if mirror is None:
        pytest.skip("no Debian bookworm mirror in apt's sources to make the base image from")
    cache.mkdir(parents=True, exist_ok=True)
    root = cache / "rootfs.partial"
    shutil.rmtree(root, ignore_errors=True)
    made = subprocess.run(
        [debootstrap, "--variant=minbase", "--include=python3,python3-pip,passwd",
         "bookworm", str(root), mirror],
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    # as in the official image: python and pip in /usr/local/bin, system-wide installs
    (root / "usr/local/bin").mkdir(parents=True, exist_ok=True)
    (root / "usr/local/bin/python").symlink_to("/usr/bin/python3")
    (root / "usr/local/bin/pip").symlink_to("/usr/bin/pip3")
    (root / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    # the machine's own trust anchors (a site may reach PyPI through a TLS-inspecting
    # gateway whose CA it trusts): the build's pip then trusts what the host's pip does
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if bundle.exists():
        shutil.copyfile(bundle, root / "etc/ssl/certs/ca-certificates.crt")
    partial = tar.with_suffix(".partial")
    subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True)
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(tar)
    return tar


#: What the Dockerfile copies from the repository root: the worker distribution's
#: packaging (packaging/worker and its build helper), the version file, the package.
CONTEXT = (
    "packaging/from_tree.py",
    "packaging/worker",
    "phoebe_spawner/_version.py",
    "phoebe_kernel_worker",
)


def build_context() -> io.BytesIO:
    """The Dockerfile and what it copies (the repository root minus everything else;
    no byte code nor build output of the checkout)."""

    def source_only(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        if "__pycache__" in parts or "build" in parts or info.name.endswith(".egg-info"):
            return None
        return info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(DOCKERFILE), arcname="Dockerfile")
        for path in CONTEXT:
            tar.add(str(REPO_ROOT / path), arcname=path, filter=source_only)
    buf.seek(0)
    return buf


def build(engine: Any) -> list[str]:
    """Import the base and build the production image; returns the build's output."""
    client = engine.client
    if not client.images.list(name=":".join(BASE)):
        client.api.import_image_from_file(
            str(base_tar()),
            repository=BASE[0],
            tag=BASE[1],
            changes=["ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
                     'CMD ["python3"]'],
        )  # fmt: skip
    output: list[str] = []
    for chunk in client.api.build(
        fileobj=build_context(),
        custom_context=True,
        tag=IMAGE,
        network_mode="host",  # the engine's containers have no network of their own
        rm=True,
        forcerm=True,
        decode=True,
    ):
        output.append(str(chunk.get("stream") or chunk.get("error") or ""))
        if "error" in chunk:
            raise AssertionError("the Dockerfile did not build:\n" + "".join(output[-40:]))
    return output


async def test_the_production_dockerfile_builds_and_runs_phoebe(make_hub, docker_engine):
    await asyncio.to_thread(build, docker_engine)
    config = docker_engine.client.images.get(IMAGE).attrs["Config"]
    assert config["User"] == "1000:1000"
    assert config["WorkingDir"] == "/srv/phoebe/session"
    assert config["Cmd"] == ["python", "-m", "phoebe_kernel_worker", "--help"]
    assert "PHOEBE_ENABLE_ONLINE_PASSBANDS=FALSE" in config["Env"]

    # a real PHOEBE session in it, through the hub, with nothing of the host mounted
    app, client = await make_hub(
        phoebe=True,
        **docker_engine.hub_config(
            phoebe=True,
            DockerSpawner__image=IMAGE,
            DockerSpawner__volumes={},
            DockerSpawner__container_user="1000:1000",
            DockerSpawner__start_timeout=180,
        ),
    )
    resp = await client.post("/dash/start-session", {"project_name": "production image"})
    assert resp.status == 200, resp.body
    sid = resp.json()["session_id"]
    spawner = app.manager.sessions[sid].spawner
    attrs = docker_engine.client.api.inspect_container(spawner.container_id)
    assert attrs["Config"]["Image"] == IMAGE
    # only the session's own directories: PHOEBE and the worker come from the image
    assert {m["Destination"] for m in attrs["Mounts"]} <= {"/srv/phoebe/session", "/run/phoebe"}

    async def ok(command: str, **kwargs: Any) -> Any:
        r = await client.send(sid, command, **kwargs)
        assert r.status == 200, r.body
        assert r.json()["success"] is True, r.body
        return r.json()["result"]

    assert await ok("set_value", twig="period@binary", value=0.75) == {}
    times = [0.0, 0.25, 0.5]
    await ok("add_dataset", kind="lc", compute_times=times, overwrite=True)
    fluxes = (await ok("run_compute"))["model"]["lc01"]["fluxes"]
    assert len(fluxes) == len(times) and all(f > 0 for f in fluxes)
    assert (await client.post(f"/dash/end-session/{sid}")).status == 200
