"""Progress and output of the running command, published on the iopub channel.

PHOEBE reports progress through ``tqdm`` progress bars in its compute and solver
backends. The worker swaps those for :class:`ProgressBar`, which draws nothing and
instead reports ``(done, total)`` to the sink the worker installed
(:func:`set_sink`), at most every ``MIN_INTERVAL`` seconds plus the final step, so a
tight compute loop pays one ``time.monotonic()`` per step. :class:`LineTee` does the
same for ``sys.stdout``/``sys.stderr``: whole lines go to the sink (bounded in length
and number per command) and everything still reaches the worker's log.

Called from the worker's main thread only (PHOEBE runs there); no locking needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

MIN_INTERVAL = 0.1
MAX_LINE_CHARS = 2000
MAX_LINES_PER_COMMAND = 5000

ProgressSink = Callable[[float, str], None]
LineSink = Callable[[str, str], None]

_progress_sink: ProgressSink | None = None


def set_sink(sink: ProgressSink | None) -> None:
    """Install (or remove) the function that receives ``(fraction, message)``."""
    global _progress_sink
    _progress_sink = sink


class ProgressBar:
    """A tqdm stand-in: the subset PHOEBE uses (iterate, update, close, context manager)."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        total: float | None = None,
        desc: str | None = None,
        **_: Any,
    ) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total = total
        self.desc = desc or ""
        self.n = 0.0
        self._last = 0.0

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            return
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n: float = 1) -> None:
        self.n += n
        sink = _progress_sink
        if sink is None or not self.total:
            return
        now = time.monotonic()
        if now - self._last >= MIN_INTERVAL or self.n >= self.total:
            self._last = now
            sink(min(1.0, self.n / self.total), self.desc)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Accepted for tqdm compatibility; nothing to draw."""

    def refresh(self) -> None:
        """Accepted for tqdm compatibility; nothing to draw."""

    def close(self) -> None:
        """Accepted for tqdm compatibility; the final step was reported by update()."""

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: PHOEBE modules whose module-level ``_tqdm`` is replaced by :class:`ProgressBar`.
PHOEBE_PROGRESS_MODULES = ("phoebe.backend.backends", "phoebe.solverbackends.solverbackends")


def install_phoebe_progress() -> None:
    """Route PHOEBE's progress bars to the sink and switch them on (called once)."""
    import importlib

    import phoebe

    for name in PHOEBE_PROGRESS_MODULES:
        module = importlib.import_module(name)
        module._tqdm = ProgressBar  # type: ignore[attr-defined]
    phoebe.progressbars_on()


class LineTee:
    """A text stream that passes writes on and reports whole lines to a sink."""

    def __init__(self, stream: TextIO, name: str, sink: LineSink) -> None:
        self._stream = stream
        self.name = name
        self._sink = sink
        self._partial = ""
        self.lines = 0
        self.dropped = 0

    def write(self, text: str) -> int:
        self._stream.write(text)
        self._partial += text
        if "\n" in self._partial or "\r" in self._partial:
            *complete, self._partial = self._partial.replace("\r", "\n").split("\n")
            for line in complete:
                self._emit(line)
        if len(self._partial) > MAX_LINE_CHARS:
            self._emit(self._partial)
            self._partial = ""
        return len(text)

    def _emit(self, line: str) -> None:
        if not line.strip():
            return
        if self.lines >= MAX_LINES_PER_COMMAND:
            self.dropped += 1
            return
        self.lines += 1
        self._sink(self.name, line[:MAX_LINE_CHARS])

    def flush(self) -> None:
        self._stream.flush()

    def finish(self) -> None:
        """Report a trailing partial line and how many lines were dropped."""
        if self._partial:
            self._emit(self._partial)
            self._partial = ""
        if self.dropped:
            self._sink(self.name, f"[{self.dropped} more lines not shown]")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
