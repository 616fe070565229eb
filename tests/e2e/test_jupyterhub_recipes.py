"""The JupyterHub snippet as the README and docs/jupyterhub.md show it, and the course
group recipe of docs/jupyterhub.md in a real JupyterHub."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from .conftest import require_proxy
from .jupyterhub import ROOT, SNIPPET, JupyterHubProcess
from .test_jupyterhub import acall

DOCS = ROOT / "docs" / "jupyterhub.md"


def python_blocks(markdown: Path) -> list[str]:
    """The ```python blocks of a Markdown file, in order."""
    return re.findall(r"^```python\n(.*?)^```$", markdown.read_text(), re.S | re.M)


def test_readme_and_docs_quote_the_shipped_snippet_whole() -> None:
    snippet = SNIPPET.read_text()
    for page in (ROOT / "README.md", DOCS):
        assert snippet in python_blocks(page), f"{page.name} does not quote {SNIPPET.name}"


def recipe(title: str) -> str:
    """The first python block under the heading ``### <title>`` of docs/jupyterhub.md."""
    section = DOCS.read_text().split(f"### {title}\n", 1)[1].split("\n## ", 1)[0]
    [block, *_] = re.findall(r"^```python\n(.*?)^```$", section, re.S | re.M)
    return str(block)


@pytest.mark.jupyterhub
async def test_the_course_group_recipe_admits_only_its_members(tmp_path: Path) -> None:
    hub = JupyterHubProcess(
        tmp_path, require_proxy(), extra_config="\n" + recipe("Only one course group")
    )
    await asyncio.to_thread(hub.start)
    try:
        await asyncio.to_thread(hub.api, "POST", "/groups/astro101/users", {"users": ["alice"]})
        member = await asyncio.to_thread(hub.token_for, "alice")
        other = await asyncio.to_thread(hub.token_for, "bob")
        status, sessions = await acall(hub, "GET", "dash/sessions", member)
        assert status == 200 and sessions == {}
        status, body = await acall(hub, "GET", "dash/sessions", other)
        assert status == 403 and "access:services!service=phoebe" in body["detail"]
        # a user outside the group has no access scope at all
        user = await asyncio.to_thread(hub.api, "GET", "/user", None, other)
        assert "access:services!service=phoebe" not in user["scopes"]
    finally:
        await asyncio.to_thread(hub.close)
