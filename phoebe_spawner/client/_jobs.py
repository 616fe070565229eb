"""Following a job to its end: progress, reconnects, Ctrl-C.

:class:`JobRunner` is used by :class:`~phoebe_spawner.client.PhoebeClient` for
``run_compute``, ``run_solver`` and ``run_job``. It reads the job's Server-Sent Events
on their own connection, feeds progress to a display and to the caller's callback,
resumes a dropped stream with ``Last-Event-ID`` (no gap, no duplicate), and fetches
the result once the job succeeded.

A KeyboardInterrupt while waiting (Ctrl-C in a terminal, the stop button of a
notebook, or raised by the callback) cancels the job on the hub, waits until the hub
confirms it ended, and raises :class:`ComputationCancelled` (a KeyboardInterrupt). Any
other exception from the callback cancels the job too, then propagates.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from ._errors import (
    ComputationCancelled,
    Conflict,
    HubConnectionError,
    JobCancelled,
    JobFailed,
    PhoebeClientError,
    PhoebeError,
    WorkerUnavailable,
)
from ._http import EventStream, SSEEvent, Transport
from ._progress import Display, make_display

__all__ = ["JobCallback", "JobRunner"]

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
#: Called with every event of the job (``queued``, ``started``, ``progress``, ``log``,
#: then ``succeeded``/``failed``/``cancelled``).
JobCallback = Callable[[SSEEvent], None]


class JobRunner:
    """Waits for jobs of one transport.

    ``stream_timeout`` is how long the event stream may stay silent before it is
    reopened (the hub sends a keep-alive comment every 15 s by default);
    ``reconnect_attempts`` how often in a row a broken stream is reopened before
    giving up (the job keeps running on the hub; the error names it);
    ``cancel_timeout`` bounds the wait for a cancel's confirmation.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        stream_timeout: float = 60.0,
        reconnect_attempts: int = 5,
        cancel_timeout: float = 120.0,
    ) -> None:
        self.transport = transport
        self.stream_timeout = stream_timeout
        self.reconnect_attempts = reconnect_attempts
        self.cancel_timeout = cancel_timeout
        #: The open stream while a job is followed (tests break it on purpose).
        self.stream: EventStream | None = None

    def wait(
        self,
        job_id: str,
        command: str,
        *,
        progress: bool = True,
        callback: JobCallback | None = None,
        show_output: bool = False,
    ) -> Any:
        """Follow job ``job_id`` until it ends and return the worker's result.

        Raises :class:`PhoebeError` when PHOEBE raised, :class:`JobFailed` when the job
        failed in the hub, :class:`JobCancelled` when someone else cancelled it, and
        :class:`ComputationCancelled` after Ctrl-C (see the module docstring).
        """
        display = make_display(progress, command)
        status = "interrupted"
        try:
            final = self._follow(job_id, display, callback, show_output)
            status = final.event
        except HubConnectionError:
            status = "disconnected"
            raise
        except KeyboardInterrupt:
            display.close("cancelling")
            status = ""
            raise self._cancel_after_interrupt(job_id, command) from None
        except BaseException:
            status = "cancelled"
            self._cancel_quietly(job_id)
            raise
        finally:
            if status:
                display.close(status)
        return self._outcome(job_id, command, final)

    # ------------------------------------------------------------------ the stream

    def _follow(
        self,
        job_id: str,
        display: Display,
        callback: JobCallback | None,
        show_output: bool,
    ) -> SSEEvent:
        """Read events until the terminal one, reopening a broken stream."""
        last_id: int | None = None
        failures = 0
        path = f"api/v1/jobs/{job_id}/events"
        while True:
            opened_at = time.monotonic()
            try:
                self.stream = self.transport.open_stream(
                    path, last_event_id=last_id, read_timeout=self.stream_timeout
                )
                for event in self.stream.events():
                    if event.id is not None:
                        if last_id is not None and event.id <= last_id:
                            continue
                        last_id = event.id
                    failures = 0
                    self._show(event, display, show_output)
                    if callback is not None:
                        callback(event)
                    if event.event in TERMINAL:
                        return event
                reason = "the event stream ended early"
            except (HubConnectionError, WorkerUnavailable) as exc:  # 503: connection cap
                reason = str(exc)
            finally:
                if self.stream is not None:
                    self.stream.close()
                    self.stream = None
            # a stream that stayed up a while (a proxy cutting long streams) starts afresh
            failures = 1 if time.monotonic() - opened_at > 10 else failures + 1
            if failures > self.reconnect_attempts:
                raise HubConnectionError(
                    f"lost the events of job {job_id} ({reason}); it goes on running on "
                    f"the hub: wait_job({job_id!r}) follows it again, cancel_job() stops it"
                )
            time.sleep(min(0.2 * 2**failures, 5.0))

    @staticmethod
    def _show(event: SSEEvent, display: Display, show_output: bool) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        if event.event == "progress":
            fraction = data.get("fraction")
            if isinstance(fraction, int | float):
                message = data.get("message")
                display.update(float(fraction), message if isinstance(message, str) else None)
        elif event.event == "log" and show_output:
            display.write(str(data.get("line", "")))

    # ------------------------------------------------------------------ outcomes

    def _outcome(self, job_id: str, command: str, final: SSEEvent) -> Any:
        data = final.data if isinstance(final.data, dict) else {}
        detail = str(data.get("detail") or f"job {job_id} {final.event}")
        if final.event == "cancelled":
            raise JobCancelled(f"job {job_id} ({command}) was cancelled: {detail}", job_id)
        try:
            reply = self.transport.request("GET", f"api/v1/jobs/{job_id}/result").body
        except Conflict:
            if final.event == "failed":
                raise JobFailed(f"job {job_id} ({command}) failed: {detail}", job_id) from None
            raise
        if not isinstance(reply, dict):
            raise PhoebeClientError(f"unexpected result of job {job_id}: {reply!r}")
        if reply.get("success") is True:
            return reply.get("result")
        raise PhoebeError(str(reply.get("error") or detail), command)

    def _cancel_after_interrupt(self, job_id: str, command: str) -> ComputationCancelled:
        """Cancel the job after Ctrl-C and wait for the hub's word; returns the
        ComputationCancelled to raise, saying how it went."""
        confirmed = False
        try:
            job = self.transport.request(
                "POST", f"api/v1/jobs/{job_id}/cancel", timeout=self.cancel_timeout
            ).body
            status = job.get("status") if isinstance(job, dict) else None
            confirmed = status == "cancelled"
            detail = (
                f"{command} (job {job_id}) was cancelled; the session is still usable"
                if confirmed
                else f"{command} (job {job_id}) ended {status} while being cancelled"
            )
        except Conflict:
            detail = (
                f"{command} (job {job_id}) had already finished when it was interrupted; "
                f"job_result({job_id!r}) has its result"
            )
        except KeyboardInterrupt:
            detail = (
                f"interrupted again while cancelling {command} (job {job_id}); it may still "
                f"be running: cancel_job({job_id!r}) stops it"
            )
        except PhoebeClientError as exc:
            detail = f"could not cancel {command} (job {job_id}): {exc}"
        return ComputationCancelled(detail, job_id, confirmed)

    def _cancel_quietly(self, job_id: str) -> None:
        """Cancel a job whose follower failed (e.g. the callback raised); errors ignored."""
        with contextlib.suppress(PhoebeClientError, KeyboardInterrupt):
            self.transport.request(
                "POST", f"api/v1/jobs/{job_id}/cancel", timeout=self.cancel_timeout
            )
