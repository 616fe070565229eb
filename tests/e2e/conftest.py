"""Fixtures of the end-to-end tier: a real JupyterHub with phoebe-spawner as its service."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .jupyterhub import JupyterHubProcess, find_proxy


def require_proxy() -> str:
    proxy = find_proxy()
    if proxy is None:
        pytest.skip("configurable-http-proxy is not installed (npm; .ci/node-packages installs it)")
    return proxy


@pytest.fixture(scope="module")
def jupyterhub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterHubProcess]:
    """A JupyterHub (real PHOEBE workers) shared by the tests of one module."""
    hub = JupyterHubProcess(
        tmp_path_factory.mktemp("jupyterhub"), require_proxy(), phoebe_workers=True
    )
    hub.start()
    try:
        yield hub
    finally:
        hub.close(timeout=15)  # raises if the hub or its service does not stop in time
