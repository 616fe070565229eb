"""A cookie-keeping HTTP client that logs in through JupyterHub like a browser does.

Blocking (urllib); tests call it through ``asyncio.to_thread``. It follows redirects
and keeps cookies, so ``login`` walks the whole OAuth code flow: service page ->
hub authorize -> hub login form -> authorize -> service callback -> service page.
"""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass
class Page:
    status: int
    url: str
    body: str
    headers: dict[str, str]


def lower(headers: Any) -> dict[str, str]:
    """Headers by lower-case name (the proxy may change their case)."""
    return {k.lower(): v for k, v in headers.items()}


class Browser:
    def __init__(self) -> None:
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def open(
        self,
        url: str,
        data: dict[str, str] | bytes | None = None,
        *,
        method: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Page:
        body = urllib.parse.urlencode(data).encode() if isinstance(data, dict) else data
        req = urllib.request.Request(
            url, data=body, method=method, headers={"Accept": "text/html", **(headers or {})}
        )
        try:
            with self.opener.open(req, timeout=60) as r:
                return Page(r.status, r.url, r.read().decode(errors="replace"), lower(r.headers))
        except urllib.error.HTTPError as e:
            return Page(e.code, e.url, e.read().decode(errors="replace"), lower(e.headers))

    def login(self, start_url: str, user: str, password: str) -> Page:
        """Open ``start_url``, follow it to JupyterHub's login form, log in, and return
        the page the OAuth flow finally lands on."""
        page = self.open(start_url)
        assert "/hub/login" in page.url, f"expected the hub's login page, got {page.url}"
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.body)
        form = {"username": user, "password": password}
        if xsrf:
            form["_xsrf"] = xsrf.group(1)
        return self.open(page.url, form)

    def cookie(self, name_part: str) -> str | None:
        for c in self.cookies:
            if name_part in c.name:
                return c.value
        return None
