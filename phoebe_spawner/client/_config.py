"""Where the hub is and how to authenticate: the client's zero-argument configuration.

:func:`resolve_url` and :func:`resolve_token` are called by
:class:`~phoebe_spawner.client.PhoebeClient` when it is created. Explicit arguments
win; otherwise the environment decides:

===============================  =========================================================
variable                         meaning
===============================  =========================================================
``PHOEBE_SPAWNER_URL``           the hub's API base URL (a JupyterHub deployment sets it
                                 for notebook servers)
``JUPYTERHUB_PUBLIC_HUB_URL``    inside a single-user server: the hub's public URL; the
                                 service is then ``<its base>/services/<name>/``
``JUPYTERHUB_PUBLIC_URL``        the same from the server's public URL and
                                 ``JUPYTERHUB_BASE_URL``
``PHOEBE_SPAWNER_SERVICE_NAME``  the service's name in JupyterHub (default ``phoebe``)
``PHOEBE_SPAWNER_TOKEN``         a token for the hub (``Authorization: Bearer``)
``JUPYTERHUB_API_TOKEN``         the notebook server's JupyterHub token
                                 (``Authorization: token``)
===============================  =========================================================
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

__all__ = ["ConfigurationError", "resolve_token", "resolve_url"]

DEFAULT_SERVICE_NAME = "phoebe"


class ConfigurationError(ValueError):
    """The client cannot tell where the hub is or how to reach it."""


def _service_url(base: str, environ: Mapping[str, str]) -> str:
    name = environ.get("PHOEBE_SPAWNER_SERVICE_NAME") or DEFAULT_SERVICE_NAME
    return base.rstrip("/") + f"/services/{urllib.parse.quote(name, safe='')}/"


def resolve_url(url: str | None, environ: Mapping[str, str]) -> str:
    """The API base URL (ending in ``/``) from ``url`` or the environment."""
    if not url:
        url = environ.get("PHOEBE_SPAWNER_URL") or None
    if not url and environ.get("JUPYTERHUB_PUBLIC_HUB_URL"):
        # e.g. https://example.org/jhub/hub/ -> https://example.org/jhub/services/phoebe/
        hub = environ["JUPYTERHUB_PUBLIC_HUB_URL"].rstrip("/")
        base = hub[: -len("/hub")] if hub.endswith("/hub") else hub
        url = _service_url(base, environ)
    if not url and environ.get("JUPYTERHUB_PUBLIC_URL"):
        parts = urllib.parse.urlsplit(environ["JUPYTERHUB_PUBLIC_URL"])
        base_path = environ.get("JUPYTERHUB_BASE_URL") or "/"
        url = _service_url(f"{parts.scheme}://{parts.netloc}{base_path}", environ)
    if not url:
        raise ConfigurationError(
            "Where is the phoebe-spawner hub? Pass its URL, e.g. "
            "PhoebeClient('http://localhost:8001'), or set PHOEBE_SPAWNER_URL "
            "(inside JupyterHub the administrator usually sets it for you)."
        )
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"The hub URL must start with http:// or https://: {url!r}")
    if parts.query or parts.fragment:
        raise ConfigurationError(f"The hub URL must not have a query or fragment: {url!r}")
    return (
        urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")).rstrip("/") + "/"
    )


def resolve_token(
    token: str | None, scheme: str | None, environ: Mapping[str, str]
) -> tuple[str | None, str]:
    """``(token, scheme)`` for the Authorization header; token None means no header.

    An explicit token is sent as ``Bearer`` (every auth mode accepts that), a
    ``JUPYTERHUB_API_TOKEN`` as ``token`` (JupyterHub's own scheme); ``scheme``
    overrides either.
    """
    if token:
        return token, scheme or "Bearer"
    if environ.get("PHOEBE_SPAWNER_TOKEN"):
        return environ["PHOEBE_SPAWNER_TOKEN"], scheme or "Bearer"
    if environ.get("JUPYTERHUB_API_TOKEN"):
        return environ["JUPYTERHUB_API_TOKEN"], scheme or "token"
    return None, scheme or "Bearer"
