"""Settings of the service's own config that contradict what JupyterHub gives it.

A managed JupyterHub service is told where to listen (``$JUPYTERHUB_SERVICE_URL``),
the URL prefix the hub's proxy routes to it (``$JUPYTERHUB_SERVICE_PREFIX``) and its
credentials (``$JUPYTERHUB_SERVICE_NAME``, ``$JUPYTERHUB_API_TOKEN``), and
:class:`~phoebe_spawner.app.PhoebeSpawnerApp` takes the defaults of ``ip``, ``port``,
``base_url`` and ``auth_mode`` from them. A config file or flag that sets one of them
otherwise wins silently, which makes the service unreachable behind the proxy or opens
it to anyone the proxy lets through. :func:`service_overrides` names each such setting
and whether the app must refuse to start or only warn; ``PhoebeSpawnerApp.setup``
calls it before it makes anything. It imports nothing of JupyterHub's.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..configcheck import loopback_only

#: ``ip`` values that mean every interface.
WILDCARDS = {"", "0.0.0.0", "::"}  # noqa: S104 - only compared


@dataclass(frozen=True)
class Override:
    """One setting of the service's config that differs from what JupyterHub provides."""

    setting: str
    message: str
    fatal: bool  # True: the service refuses to start; False: it logs a warning


def _same_host(ip: str, host: str) -> bool:
    return ip == host or (loopback_only(ip) and loopback_only(host))


def service_overrides(
    *, ip: str, port: int, base_url: str, auth_mode: str, environ: Mapping[str, str]
) -> list[Override]:
    """The settings among ``ip``, ``port``, ``base_url`` and ``auth_mode`` (the effective
    values) that contradict JupyterHub's service variables in ``environ``; empty outside
    a JupyterHub service or when they agree.

    - ``port`` other than the service URL's, ``ip`` that does not include its host, and
      ``base_url`` other than the prefix: refused, the proxy could not reach the pages;
    - ``ip`` a wildcard (every interface): a warning, the service is also reachable
      without the proxy (its auth still applies);
    - auth mode ``none``: refused, everyone the proxy lets through would be one
      anonymous user that JupyterHub never checked; another mode than ``hub`` (jwt,
      external, a plug-in): a warning, the hub's users and tokens are not accepted.
    """
    found: list[Override] = []
    service_url = environ.get("JUPYTERHUB_SERVICE_URL")
    if service_url:
        url = urllib.parse.urlsplit(service_url)
        want_port = url.port or (443 if url.scheme == "https" else 80)
        host = url.hostname or "127.0.0.1"
        if port != want_port:
            found.append(
                Override(
                    "port",
                    f"port {port} is not the port of JupyterHub's service URL {service_url}: "
                    "the hub's proxy could not reach the service; remove port from the "
                    "service's config (JupyterHub sets it) or change the service's url in "
                    "jupyterhub_config.py",
                    fatal=True,
                )
            )
        if ip in WILDCARDS:
            found.append(
                Override(
                    "ip",
                    f"listening on every interface ({ip or 'ip empty'}) although JupyterHub's "
                    f"service URL is {service_url}: the service is reachable without the "
                    "hub's proxy too (JupyterHub still checks every user)",
                    fatal=False,
                )
            )
        elif not _same_host(ip, host):
            found.append(
                Override(
                    "ip",
                    f"ip {ip} is not the host of JupyterHub's service URL {service_url}: the "
                    "hub's proxy could not reach the service; remove ip from the service's "
                    "config (JupyterHub sets it)",
                    fatal=True,
                )
            )
    prefix = environ.get("JUPYTERHUB_SERVICE_PREFIX")
    if prefix:
        stripped = prefix.strip("/")
        want_base = f"/{stripped}/" if stripped else "/"
        if base_url != want_base:
            found.append(
                Override(
                    "base_url",
                    f"base_url {base_url} is not JupyterHub's service prefix {want_base}: the "
                    "hub's proxy sends that prefix here, every page would answer 404; remove "
                    "base_url from the service's config (JupyterHub sets it)",
                    fatal=True,
                )
            )
    in_hub = environ.get("JUPYTERHUB_SERVICE_NAME") and environ.get("JUPYTERHUB_API_TOKEN")
    if in_hub and auth_mode == "none":
        found.append(
            Override(
                "auth_mode",
                "auth mode none inside JupyterHub: everyone the hub's proxy lets through "
                "would use the service as one anonymous user; remove auth_mode from the "
                "service's config (hub is the default here)",
                fatal=True,
            )
        )
    elif in_hub and auth_mode != "hub":
        found.append(
            Override(
                "auth_mode",
                f"auth mode {auth_mode} inside JupyterHub: JupyterHub's users and tokens are "
                "not accepted, users need this service's own credentials (remove auth_mode "
                "from the service's config to use hub)",
                fatal=False,
            )
        )
    return found


def check_service_overrides(
    *, ip: str, port: int, base_url: str, auth_mode: str, log: logging.Logger | Any
) -> None:
    """Under JupyterHub's service variables, refuse (``ValueError``, which the app reports
    in one line) or log a warning about the settings :func:`service_overrides` names;
    called by ``PhoebeSpawnerApp.setup`` before it makes anything."""
    found = service_overrides(
        ip=ip, port=port, base_url=base_url, auth_mode=auth_mode, environ=os.environ
    )
    for override in found:
        if not override.fatal:
            log.warning("JupyterHub service: %s", override.message)
    fatal = [o.message for o in found if o.fatal]
    if fatal:
        raise ValueError("; and ".join(fatal))
