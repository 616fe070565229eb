"""Showing a job's progress while the client waits for it.

:func:`make_display` is called by the job runner once per job: with ``progress=True``
it returns a tqdm bar (``tqdm.auto``: a widget in notebooks, text in terminals) when
tqdm is installed, otherwise a plain one-line text display on stderr; with
``progress=False`` a display that shows nothing. The runner feeds it the job's
``progress`` events (a fraction 0..1 and a message) and, with ``show_output``, the
worker's ``log`` lines.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol

__all__ = ["Display", "make_display"]

_STEPS = 1000  # the bar counts in thousandths of the job


class Display(Protocol):
    """What the job runner calls; all methods must be cheap and never raise."""

    def update(self, fraction: float, message: str | None) -> None: ...

    def write(self, line: str) -> None: ...

    def close(self, status: str) -> None: ...


class _Silent:
    def update(self, fraction: float, message: str | None) -> None:
        pass

    def write(self, line: str) -> None:
        pass

    def close(self, status: str) -> None:
        pass


class _TqdmDisplay:
    """A tqdm bar from 0 to 100 %; the message becomes the bar's description."""

    def __init__(self, tqdm: Any, desc: str) -> None:
        self._tqdm = tqdm
        self._bar = tqdm(
            total=_STEPS,
            desc=desc,
            unit="‰",
            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]",
            leave=True,
        )
        self._desc = desc

    def update(self, fraction: float, message: str | None) -> None:
        target = max(0, min(_STEPS, round(fraction * _STEPS)))
        if message and message != self._desc:
            self._desc = message
            self._bar.set_description_str(message, refresh=False)
        if target > self._bar.n:
            self._bar.update(target - self._bar.n)

    def write(self, line: str) -> None:
        self._tqdm.write(line)

    def close(self, status: str) -> None:
        if status == "succeeded" and self._bar.n < _STEPS:
            self._bar.update(_STEPS - self._bar.n)
        self._bar.set_postfix_str(status, refresh=False)
        self._bar.close()


class _TextDisplay:
    """One rewritten line on stderr (when tqdm is not installed)."""

    def __init__(self, desc: str) -> None:
        self._desc = desc
        self._shown = -1

    def update(self, fraction: float, message: str | None) -> None:
        percent = max(0, min(100, int(fraction * 100)))
        if message:
            self._desc = message
        if percent != self._shown:
            self._shown = percent
            sys.stderr.write(f"\r{self._desc}: {percent:3d}%")
            sys.stderr.flush()

    def write(self, line: str) -> None:
        sys.stderr.write(f"\r{line}\n")
        sys.stderr.flush()

    def close(self, status: str) -> None:
        sys.stderr.write(f"\r{self._desc}: {status}\n")
        sys.stderr.flush()


def make_display(progress: bool, desc: str) -> Display:
    """The display for one job (see the module docstring)."""
    if not progress:
        return _Silent()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _TextDisplay(desc)
    try:
        return _TqdmDisplay(tqdm, desc)
    except ImportError:  # a notebook without ipywidgets: tqdm's text bar instead
        from tqdm.std import tqdm as text_tqdm

        return _TqdmDisplay(text_tqdm, desc)
