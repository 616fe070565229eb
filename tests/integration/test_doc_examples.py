"""Every code example of README.md and docs/*.md, run as written, so the docs cannot drift.

The blocks come from the Markdown itself (:mod:`tests.markdown_blocks`). Each page that
has examples to run gets one real hub with real PHOEBE workers (:class:`ThreadedHub`),
and its blocks run in page order:

- python notebook cells (``[3]:`` prompts) share one namespace, as in a notebook; other
  blocks see what the cells before them defined, without changing it. The docs' hub
  address (``http://127.0.0.1:8001``, ``localhost:8001``) becomes the test hub's, and
  ``$PHOEBE_SPAWNER_URL`` names it, as the notebook environment of docs/client.md does.
  A cell prints what it would in a notebook, and that must be the output the page shows
  after it (unless marked ``<!-- output varies: why -->``); a cell whose output ends in
  ``SomeError: ...`` must raise that exception.
- python config fragments (``c.Class.trait = ...``) run with ``c`` a traitlets Config,
  then are checked like a config file (fail closed: unknown classes and options, bad
  values) against the hub's classes, or JupyterHub's for ``c.JupyterHub...`` snippets.
- bash blocks run in bash against the hub with ``set -e -o pipefail`` and a ``curl``
  that fails on an HTTP error; ``<session_id>`` and ``$SID`` are a session the test
  started. No reply may say ``"success": false``.

A block that cannot run here carries ``<!-- not run: <reason> -->`` on the line above;
one run with ``<!-- run with Ctrl-C: ... -->`` gets a real SIGINT once its job runs.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import signal
import subprocess
import threading
import traceback
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

from phoebe_spawner.app import PhoebeSpawnerApp
from phoebe_spawner.client import PhoebeClient
from phoebe_spawner.configcheck import KnownClasses, check, setting_lines
from phoebe_spawner.spawners.slurm.script import DEFAULT_TEMPLATE

from ..markdown_blocks import CODE, DATA, Block, blocks, cell_source, output_after
from ..waiting import WaitTimeout, wait_for
from .hub_thread import ThreadedHub

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOC_HUB = re.compile(r"(?:http://)?(?:127\.0\.0\.1|localhost):8001/?")
EXCEPTION_LINE = re.compile(r"^(?P<name>[A-Z]\w*(?:Error|Cancelled|Exception|Interrupt))\b")
PROGRESS_BAR = re.compile(r"^\w+: +\d+%\|")  # tqdm's, on stderr
CURL_FAILS_ON_HTTP_ERRORS = 'curl() { command curl --fail-with-body "$@"; }\n'


def code_blocks(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.is_code]


def to_run(page: Path) -> list[Block]:
    return [b for b in code_blocks(page) if b.marker != "not run"]


def test_the_extractor_reads_fences_markers_and_cells(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Text.\n\n<!-- not run: needs a cluster -->\n```bash\nsbatch x\n```\n\n"
        "<!-- output varies: why -->\n"
        "```python\n[12]: for i in range(2):\n          print(i)\n```\n```\n0\n1\n```\n\n"
        "- item\n\n  ```json\n  {}\n  ```\n"
    )
    found = blocks(page)
    assert [(b.line, b.lang, b.marker, b.reason) for b in found] == [
        (4, "bash", "not run", "needs a cluster"),
        (9, "python", "output varies", "why"),
        (13, "", "", ""),
        (20, "json", "", ""),
    ]
    assert cell_source(found[1]) == "for i in range(2):\n    print(i)\n"
    assert output_after(page, found[1]) == found[2]
    assert output_after(page, found[0]) is None
    assert found[3].text == "{}\n"


def test_every_code_block_is_run_or_says_why_not() -> None:
    unknown = [
        f"{b.where} ({b.lang})" for p in PAGES for b in blocks(p) if b.lang not in CODE | DATA
    ]
    assert not unknown, f"blocks in a language the test does not know: {unknown}"
    silent = [b.where for p in PAGES for b in code_blocks(p) if b.marker and not b.reason]
    assert not silent, f"markers without a reason: {silent}"
    assert sum(len(to_run(p)) for p in PAGES) >= 15  # the runner below sees the examples


def test_the_quick_start_is_two_commands() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    section = text.index("## Quick start\n")
    first = next(b for b in code_blocks(readme) if b.line > text[:section].count("\n") + 1)
    commands = [line for line in first.text.splitlines() if line.strip()]
    assert len(commands) == 2, commands
    assert commands[0].split()[:2] == ["bash", ".ci/serve"]


def test_the_batch_script_shown_is_the_default_one() -> None:
    """docs/slurm.md cannot run its batch script here, so it must be the one the hub uses."""
    (shown,) = [b for b in code_blocks(ROOT / "docs" / "slurm.md") if b.text.startswith("#!")]
    assert shown.marker == "not run"
    assert shown.text == DEFAULT_TEMPLATE


@pytest.mark.phoebe
@pytest.mark.parametrize("page", [p for p in PAGES if to_run(p)], ids=lambda p: p.name)
def test_examples_run_as_written(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # files the examples write (bundles) land here
    fragments = [b for b in to_run(page) if is_config_fragment(b)]
    for block in fragments:
        run_config_fragment(block)
    examples = [b for b in to_run(page) if b not in fragments]
    if not examples:
        return
    with ThreadedHub(tmp_path / "hub", phoebe=True) as hub:
        monkeypatch.setenv("PHOEBE_SPAWNER_URL", hub.url)
        session_id = ""
        cells: dict[str, Any] = {}
        try:
            for block in examples:
                if block.lang == "python":
                    run_python(block, cells, hub)
                    continue
                if needs_a_session(block) and not session_id:
                    session_id = hub.http("POST", "dash/start-session")["session_id"]
                run_shell(block, hub.url, session_id)
        finally:  # a notebook's clients stay open; the test closes them (and their sessions)
            for value in cells.values():
                if isinstance(value, PhoebeClient):
                    value.close()


def needs_a_session(block: Block) -> bool:
    """Whether a shell block uses a session (``<session_id>``, ``$SID``) it did not start."""
    uses = re.search(r"<session_id>|\$SID\b", block.text)
    return bool(uses) and not re.search(r"^SID=", block.text, re.MULTILINE)


def at_hub(text: str, url: str) -> str:
    """``text`` with the docs' hub address replaced by ``url`` (the test hub's)."""
    base = url.rstrip("/")
    return DOC_HUB.sub(base + "/", text).replace(base + '/"', base + '"')


def is_config_fragment(block: Block) -> bool:
    """A python block that sets ``c.Class.trait`` (a config file's lines)."""
    return block.lang == "python" and bool(re.search(r"^c\.", block.text, re.MULTILINE))


def run_python(block: Block, cells: dict[str, Any], hub: ThreadedHub) -> None:
    """Run one python block (a cell in ``cells``, anything else on a copy of them). A cell
    shows what a notebook would: its prints and the repr of a last expression; they must
    be the output the page shows after it (progress bars aside)."""
    source = at_hub(cell_source(block), hub.url)
    namespace = cells if block.is_cell else dict(cells)  # sees the page's imports so far
    shown = output_after(block.path, block)
    lines = [line for line in (shown.text if shown else "").splitlines() if line.strip()]
    expected = EXCEPTION_LINE.match(lines[-1]) if lines else None
    if block.marker == "run with Ctrl-C":
        press_ctrl_c_once_a_job_runs(hub)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            run_as_a_cell(source, block.where, namespace)
    except BaseException as e:
        if expected and type(e).__name__ == expected["name"]:
            return
        raise AssertionError(f"{block.where} failed:\n{traceback.format_exc()}") from None
    assert not expected, f"{block.where} should raise {expected['name']}, as its output shows"
    if block.is_cell and block.marker != "output varies":
        want = [line for line in lines if not PROGRESS_BAR.match(line)]
        assert printed.getvalue().splitlines() == want, f"{block.where} printed otherwise"


def run_as_a_cell(source: str, where: str, namespace: dict[str, Any]) -> None:
    """Run ``source`` as a notebook cell: a last expression's value is printed (repr)."""
    tree = ast.parse(source, where)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, where, "exec"), namespace)  # noqa: S102 - the docs' own code
    if last is not None:
        value = eval(compile(ast.Expression(last.value), where, "eval"), namespace)  # noqa: S307
        if value is not None:
            print(repr(value))


def press_ctrl_c_once_a_job_runs(hub: ThreadedHub) -> None:
    """Send this process a SIGINT (Ctrl-C, the notebook's stop button) once a job runs."""

    def running() -> bool:
        return bool(hub.http("GET", "api/v1/jobs?status=running")["jobs"])

    def press() -> None:
        try:
            wait_for(running, "a job to run", timeout=60)
        except WaitTimeout:  # the block failed before its job ran: its test reports that
            return
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()

    threading.Thread(target=press, daemon=True).start()


def run_config_fragment(block: Block) -> None:
    """A config fragment, checked like a config file (fail closed) against the classes of
    the program it configures: JupyterHub's (``c.JupyterHub...``) or the hub's."""
    source = block.text
    c = Config()
    exec(compile(source, block.where, "exec"), {"c": c, "get_config": lambda: c})  # noqa: S102
    if "JupyterHub" in c:
        hub_app = pytest.importorskip("jupyterhub.app", reason="jupyterhub is not installed")
        jupyterhub = hub_app.JupyterHub()
        known = KnownClasses.of([hub_app.JupyterHub, *jupyterhub.classes])
        check(c, known, block.where, setting_lines(source))
        jupyterhub.update_config(c)  # the values have the traits' types
        return
    app = PhoebeSpawnerApp()
    check(c, app.known_classes(c), block.where, setting_lines(source))
    app.update_config(c)


def run_shell(block: Block, url: str, session_id: str) -> None:
    """A bash block against the hub: every curl must succeed and no reply may fail."""
    script = at_hub(block.text, url).replace("<session_id>", "$SID")
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", CURL_FAILS_ON_HTTP_ERRORS + script],
        env={**os.environ, "SID": session_id},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{block.where}: {result.stdout}\n{result.stderr}"
    replies = result.stdout.replace(" ", "")
    assert replies.strip(), f"{block.where} printed nothing"
    assert '"success":false' not in replies, f"{block.where}: {result.stdout}"
