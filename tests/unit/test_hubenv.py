"""The service's own settings against what JupyterHub gives a managed service
(phoebe_spawner.auth.hubenv), and the app refusing or warning at start-up."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from phoebe_spawner.app import PhoebeSpawnerApp
from phoebe_spawner.auth.hubenv import check_service_overrides, service_overrides

MANAGED = {
    "JUPYTERHUB_SERVICE_NAME": "phoebe",
    "JUPYTERHUB_API_TOKEN": "t" * 32,
    "JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:8890",
    "JUPYTERHUB_SERVICE_PREFIX": "/services/phoebe/",
}
EVERY = "0.0.0.0"  # noqa: S104 - every interface, as a setting to check
AGREED = {"ip": "127.0.0.1", "port": 8890, "base_url": "/services/phoebe/", "auth_mode": "hub"}


def overrides(environ: dict[str, str] = MANAGED, **settings: object) -> dict[str, bool]:
    found = service_overrides(**{**AGREED, **settings}, environ=environ)  # type: ignore[arg-type]
    return {o.setting: o.fatal for o in found}


def test_what_jupyterhub_provides_passes() -> None:
    assert overrides() == {}
    assert overrides(ip="localhost") == {}  # the same loopback host by another name


def test_outside_a_jupyterhub_service_nothing_is_checked() -> None:
    assert overrides({}, ip="10.1.2.3", port=1, base_url="/x/", auth_mode="none") == {}


def test_a_port_ip_or_prefix_the_proxy_cannot_reach_is_refused() -> None:
    assert overrides(port=8001) == {"port": True}
    assert overrides(ip="10.1.2.3") == {"ip": True}
    assert overrides(base_url="/") == {"base_url": True}


def test_every_interface_is_only_a_warning() -> None:
    assert overrides(ip=EVERY) == {"ip": False}


def test_auth_mode_none_is_refused_and_other_modes_warned() -> None:
    assert overrides(auth_mode="none") == {"auth_mode": True}
    assert overrides(auth_mode="jwt") == {"auth_mode": False}


def test_an_external_service_has_no_service_url_to_listen_on() -> None:
    """The external shape sets the prefix and credentials but chooses ip and port itself."""
    external = {k: v for k, v in MANAGED.items() if k != "JUPYTERHUB_SERVICE_URL"}
    assert overrides(external, ip=EVERY, port=9000) == {}
    assert overrides(external, base_url="/") == {"base_url": True}


def _app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: list[str]) -> PhoebeSpawnerApp:
    for name, value in MANAGED.items():
        monkeypatch.setenv(name, value)
    app = PhoebeSpawnerApp()
    app.initialize(["--data-dir", str(tmp_path / "data"), "--config", "", *argv])
    return app


async def test_the_app_refuses_before_making_anything(monkeypatch, tmp_path) -> None:
    app = _app(monkeypatch, tmp_path, ["--port", "8001", "--auth-mode", "none"])
    with pytest.raises(ValueError, match="port 8001 is not the port of JupyterHub") as refused:
        await app.setup()
    message = str(refused.value)
    assert "auth mode none inside JupyterHub" in message
    assert not (tmp_path / "data").exists()


def test_the_app_warns_about_every_interface(monkeypatch, tmp_path, caplog) -> None:
    app = _app(monkeypatch, tmp_path, ["--ip", EVERY])
    assert (app.ip, app.port, app.base_url) == (EVERY, 8890, "/services/phoebe/")
    app.log.propagate = True
    with caplog.at_level(logging.WARNING):
        check_service_overrides(
            ip=app.ip, port=app.port, base_url=app.base_url, auth_mode="hub", log=app.log
        )
    assert "listening on every interface" in caplog.text
