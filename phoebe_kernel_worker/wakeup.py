"""What wakes an idle worker's threads: a pipe each one polls along with its sockets.

An idle worker sleeps in polls with no timeout (``phoebe_kernel_worker.worker``: the
shell loop on the main thread, the control loop on its own), so a thousand idle
sessions cost the machine no wake-ups. Whatever must wake a thread writes a byte to its
:class:`WakePipe`: the other thread asking it to stop, or, for the main thread, any
signal (``signal.set_wakeup_fd``), which the kernel may deliver to a thread other than
the one blocked in the poll.
"""

from __future__ import annotations

import contextlib
import os
import signal


class WakePipe:
    """A non-blocking pipe one thread polls and anything (another thread, a signal
    handler's C half) writes a byte to, to wake it."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def wake(self) -> None:
        """Make :attr:`read_fd` readable (safe from any thread; a full pipe is awake, a
        closed one is not written to: its number may be another file's by then)."""
        if self._write_fd < 0:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write_fd, b"\0")

    def drain(self) -> None:
        """Read what woke the poller, so the next poll sleeps again."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self.read_fd, 4096):
                pass

    def on_signals(self) -> int | None:
        """Have every signal wake this pipe (``signal.set_wakeup_fd``); returns the fd it
        replaced, or None when this is not the main thread (then signals do not)."""
        try:
            return signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        except ValueError:  # not the main thread: a test's worker
            return None

    def close(self) -> None:
        fds, self.read_fd, self._write_fd = (self.read_fd, self._write_fd), -1, -1
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
