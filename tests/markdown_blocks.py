"""Fenced code blocks of the Markdown documentation, as tests/integration/test_doc_examples.py
runs them.

A block is what stands between two fences (three or more backticks, indented as in a list
item or not). The HTML comment on the nearest non-blank line above a block may say how it
is run: ``<!-- not run: <reason> -->`` (the test skips it and requires the reason) or
``<!-- run with Ctrl-C: <how> -->`` (the test presses Ctrl-C while the block waits) or
``<!-- output varies: <why> -->`` (a cell whose printed output the test does not compare).
A notebook cell's ``[3]:`` prompt and its continuation indent are removed by
:func:`cell_source`.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,})(?P<lang>[\w+-]*)\s*$")
MARKER = re.compile(
    r"^\s*<!--\s*(?P<kind>not run|run with Ctrl-C|output varies):\s*(?P<why>.*?)\s*-->\s*$"
)
PROMPT = re.compile(r"^\[(?P<n>\d+)\]: ?")

#: Languages of code examples: every block in one of them is run or marked "not run".
CODE = frozenset({"python", "bash", "sh", "shell", "console"})
#: Languages of blocks that show data, output, diagrams or another program's config.
DATA = frozenset({"", "json", "text", "ini", "yaml", "nginx"})


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its text and its marker."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marker: str = ""  # "not run", "run with Ctrl-C", "output varies" or ""
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"

    @property
    def is_code(self) -> bool:
        return self.lang in CODE

    @property
    def is_cell(self) -> bool:
        """A notebook cell: its first line starts with a ``[n]:`` prompt."""
        return bool(PROMPT.match(self.text))


def blocks(path: Path) -> list[Block]:
    """Every fenced block of the Markdown file ``path``, in order."""
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        if end == len(lines):
            raise ValueError(f"{path}:{i + 1}: the fence is never closed")
        body = [line[indent:] if line[:indent].isspace() else line for line in lines[i + 1 : end]]
        above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marked = MARKER.match(above)
        found.append(
            Block(
                path=path,
                line=i + 1,
                lang=opening["lang"].lower(),
                text="\n".join(body) + "\n",
                marker=marked["kind"] if marked else "",
                reason=marked["why"] if marked else "",
            )
        )
        i = end + 1
    return found


def output_after(path: Path, block: Block) -> Block | None:
    """The output block right after ``block`` (a language-less block that follows it
    with nothing in between), as the walkthroughs show what a cell prints."""
    listed = blocks(path)
    after = [b for b in listed if b.line > block.line]
    if not after or after[0].lang:
        return None
    lines = path.read_text().splitlines()
    closing = block.line + block.text.count("\n")  # the closing fence's 0-based index
    between = lines[closing + 1 : after[0].line - 1]
    return after[0] if not any(line.strip() for line in between) else None


def cell_source(block: Block) -> str:
    """The Python source of a block: without a cell's ``[n]:`` prompt and the indent its
    continuation lines carry to line up with the prompt."""
    text = block.text
    prompt = PROMPT.match(text)
    if not prompt:
        return text
    width = prompt.end()
    lines = text.splitlines()
    rest = [line[width:] if line[:width].isspace() else line.lstrip() for line in lines[1:]]
    return textwrap.dedent("\n".join([lines[0][width:], *rest])) + "\n"
