"""Running Slurm's client commands from the hub, and parsing what they print.

Used by :class:`phoebe_spawner.spawners.slurm.SlurmSpawner` only. Every command runs
through :class:`SlurmCommands`: ``asyncio.create_subprocess_exec`` (never a shell, never
blocking the event loop), a timeout per call, a small environment (``PATH`` and
``SLURM_CONF``; the hub's secrets never reach Slurm or the job), and brief retries while
the controller is unreachable. The parsers are pure functions, unit-tested against
output captured from Slurm 22.05 (``tests/unit/test_slurm_parsing.py``).

Final job states come from ``scontrol show job -o`` while the controller still holds the
finished job (``MinJobAge``, 300 s by default), so no accounting database (``sacct``,
``slurmdbd``) is needed; a job the controller has purged is reported as unknown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: States in which a job may still run, or will (see ``squeue --help``, JOB STATE CODES).
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESIZING",
        "RESV_DEL_HOLD",
        "SIGNALING",
        "STOPPED",
    }
)
#: The job ended; its processes are being cleaned up on the node.
COMPLETING = "COMPLETING"

#: Human words for the states in which Slurm ended a job itself.
STATE_REASONS = {
    "COMPLETED": "ended",
    "CANCELLED": "was cancelled (scancel or an administrator)",
    "FAILED": "failed",
    "TIMEOUT": "reached its time limit",
    "OUT_OF_MEMORY": "ran out of memory",
    "NODE_FAIL": "was lost because its node failed",
    "PREEMPTED": "was preempted",
    "BOOT_FAIL": "could not start because its node failed to boot",
    "DEADLINE": "missed its deadline",
    "SPECIAL_EXIT": "ended with a special exit",
    "REVOKED": "was revoked (federation)",
}

#: stderr fragments meaning "the controller could not be reached; nothing happened".
UNREACHABLE = (
    "unable to contact slurm controller",
    "connection refused",
    "socket timed out",
    "zero bytes were transmitted or received",
    "slurm_receive_msg",
)
INVALID_JOB = "invalid job id"
ALREADY_DONE = ("already completing or completed", "job/step already completing")


class SlurmError(Exception):
    """A Slurm command failed; ``str()`` is a one-line reason (stderr, shortened)."""


class SlurmUnavailable(SlurmError):
    """The controller could not be reached (after retries); the job state is unknown."""


@dataclass(frozen=True, slots=True)
class JobInfo:
    """What the hub needs to know of one job, from ``scontrol show job -o``."""

    job_id: str
    state: str
    reason: str = ""
    name: str = ""
    nodes: str = ""
    exit_code: int = 0
    exit_signal: int = 0
    time_limit: str = ""

    @property
    def active(self) -> bool:
        """The job is queued or running (its worker may be up)."""
        return self.state in ACTIVE_STATES

    @property
    def finished(self) -> bool:
        """Slurm ended the job and cleaned it up (not queued, running or completing)."""
        return self.state not in ACTIVE_STATES and self.state != COMPLETING

    @property
    def pending(self) -> bool:
        return self.state == "PENDING"

    def exit_status(self) -> int:
        """The worker's exit status in the hub's convention (negative: killed by a signal).

        A job Slurm ended itself without an exit code (cancelled while pending, a node
        failure) counts as status 1, never 0: the session did not end on its own.
        """
        if self.exit_signal:
            return -self.exit_signal
        if self.exit_code:
            return self.exit_code
        return 0 if self.state == "COMPLETED" else 1

    def describe(self) -> str:
        """A one-line reason for the session, with Slurm's own state and reason words."""
        what = STATE_REASONS.get(self.state, "ended")
        text = f"Slurm job {self.job_id} {what} ({self.state}"
        if self.reason and self.reason != "None":
            text += f", reason {self.reason}"
        if self.state == "TIMEOUT" and self.time_limit:
            text += f", limit {self.time_limit}"
        text += ")"
        if self.exit_signal:
            try:
                sig = signal.Signals(self.exit_signal).name
            except ValueError:
                sig = f"signal {self.exit_signal}"
            text += f"; the worker was killed by {sig}"
        elif self.exit_code:
            text += f"; the worker exited with status {self.exit_code}"
        return text

    def queue_message(self) -> str:
        """A progress message while the job waits or runs."""
        if self.pending:
            reason = self.reason if self.reason and self.reason != "None" else "queued"
            return f"Slurm job {self.job_id} is pending ({reason})"
        if self.state == "RUNNING":
            return f"Slurm job {self.job_id} is running on {self.nodes or 'a node'}"
        return f"Slurm job {self.job_id} is {self.state.lower()}"


# --- parsers ---------------------------------------------------------------------------------

_JOB_ID = re.compile(r"^(\d+)(?:;[\w.-]+)?$")
_FIELD = re.compile(r"(\S+?)=(.*?)(?=\s+[\w/:.-]+=|\s*$)")


def parse_sbatch(stdout: str) -> str:
    """The job id from ``sbatch --parsable`` (``"123"`` or ``"123;cluster"``)."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    match = _JOB_ID.match(lines[-1]) if lines else None
    if match is None:
        raise SlurmError(f"sbatch printed no job id: {stdout.strip()[:200]!r}")
    return match.group(1)


def parse_scontrol_fields(line: str) -> dict[str, str]:
    """``Key=Value`` pairs of one ``scontrol show ... -o`` line (values may hold spaces)."""
    return {key: value.strip() for key, value in _FIELD.findall(line.strip())}


def parse_scontrol_job(stdout: str, job_id: str) -> JobInfo | None:
    """The job ``job_id`` from ``scontrol show job -o``; None if it is not in the output.

    Array and heterogeneous jobs print one line per component; the line whose
    ``JobId`` is ``job_id`` is used.
    """
    for line in stdout.splitlines():
        fields = parse_scontrol_fields(line)
        if fields.get("JobId") != job_id:
            continue
        code, _, sig = fields.get("ExitCode", "0:0").partition(":")
        state = fields.get("JobState", "UNKNOWN").split()[0].rstrip("+")
        return JobInfo(
            job_id=job_id,
            state=state,
            reason=fields.get("Reason", ""),
            name=fields.get("JobName", ""),
            nodes=fields.get("NodeList", "").replace("(null)", ""),
            exit_code=int(code) if code.isdigit() else 0,
            exit_signal=int(sig) if sig.isdigit() else 0,
            time_limit=fields.get("TimeLimit", ""),
        )
    return None


def is_unreachable(stderr: str) -> bool:
    """stderr says the controller could not be reached (worth a retry)."""
    low = stderr.lower()
    return any(fragment in low for fragment in UNREACHABLE)


# --- running commands ------------------------------------------------------------------------


@dataclass(slots=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str


class SlurmCommands:
    """Runs ``sbatch``/``scontrol``/``scancel`` for one spawner (see the module docstring)."""

    def __init__(
        self,
        *,
        slurm_conf: str = "",
        bin_dir: str = "",
        timeout: float = 30.0,
        retries: int = 3,
        retry_delay: float = 1.0,
    ) -> None:
        self.slurm_conf = slurm_conf
        self.bin_dir = bin_dir
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay

    def env(self) -> dict[str, str]:
        """The commands' environment: what Slurm needs, nothing of the hub's secrets.

        ``sbatch`` propagates its environment to the job, so this is also the base of
        the job's environment (the batch script exports the worker's variables).
        """
        env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")}
        for var in ("LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME"):
            if var in os.environ:
                env[var] = os.environ[var]
        conf = self.slurm_conf or os.environ.get("SLURM_CONF", "")
        if conf:
            env["SLURM_CONF"] = conf
        return env

    def _argv(self, program: str, args: list[str]) -> list[str]:
        return [os.path.join(self.bin_dir, program) if self.bin_dir else program, *args]

    async def run_once(
        self, program: str, args: list[str], stdin: bytes | None = None
    ) -> Completed:
        """Run one command once; raises :class:`SlurmError` if it cannot run or times out."""
        argv = self._argv(program, args)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.env(),
                start_new_session=True,
            )
        except OSError as e:
            raise SlurmError(f"cannot run {program}: {e.strerror}") from e
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise SlurmUnavailable(f"{program} did not answer within {self.timeout:g} s") from None
        except asyncio.CancelledError:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        assert proc.returncode is not None
        return Completed(
            proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        )

    async def run(
        self, program: str, args: list[str], *, stdin: bytes | None = None, retry: bool = True
    ) -> Completed:
        """Run a command, retrying while the controller is unreachable.

        Returns the completed command whatever its exit code, except that an
        unreachable controller after the retries raises :class:`SlurmUnavailable`.
        """
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            try:
                done = await self.run_once(program, args, stdin)
            except SlurmUnavailable:
                if attempt + 1 >= attempts:
                    raise
            else:
                if not (done.returncode != 0 and is_unreachable(done.stderr)):
                    return done
                if attempt + 1 >= attempts:
                    raise SlurmUnavailable(first_line(done.stderr) or f"{program} failed")
            log.info("Slurm controller unreachable (%s), retrying", program)
            await asyncio.sleep(self.retry_delay * (attempt + 1))
        raise AssertionError("unreachable")

    # --- the commands the spawner uses ------------------------------------------------------

    async def submit(self, script: str, extra_args: list[str]) -> str:
        """``sbatch --parsable`` with the script on stdin; returns the job id.

        Retried only when the controller was not reached at all (connect failure), so a
        submission is never made twice.
        """
        args = ["--parsable", *extra_args]
        for attempt in range(self.retries + 1):
            done = await self.run_once("sbatch", args, script.encode())
            if done.returncode == 0:
                return parse_sbatch(done.stdout)
            connect_failure = "unable to contact slurm controller" in done.stderr.lower()
            if not connect_failure or attempt == self.retries:
                reason = first_line(done.stderr) or f"exit status {done.returncode}"
                raise SlurmError(f"sbatch refused the job: {reason}")
            await asyncio.sleep(self.retry_delay * (attempt + 1))
        raise AssertionError("unreachable")

    async def job(self, job_id: str) -> JobInfo | None:
        """The job's state; None if the controller no longer knows it (purged or never).

        Anything else that is not an answer about the job (an error, empty output)
        raises :class:`SlurmError`: an unknown state is never taken for a dead job.
        """
        done = await self.run("scontrol", ["show", "job", "-o", job_id])
        if done.returncode != 0:
            if INVALID_JOB in done.stderr.lower():
                return None
            raise SlurmError(f"scontrol show job {job_id}: {first_line(done.stderr)}")
        info = parse_scontrol_job(done.stdout, job_id)
        if info is None:
            raise SlurmError(f"scontrol show job {job_id} printed nothing about the job")
        return info

    async def cancel(
        self, job_id: str, *, signal_name: str | None = None, batch_only: bool = False
    ) -> None:
        """``scancel`` the job, or only send it ``signal_name``: to the batch script's
        process (``batch_only``; the agent forwards it to the worker) or to all of the
        job's processes (``--full``). A job that already ended is not an error."""
        if signal_name is None:
            args = [job_id]
        else:
            scope = "--batch" if batch_only else "--full"
            args = [scope, f"--signal={signal_name}", job_id]
        done = await self.run("scancel", args)
        low = done.stderr.lower()
        if (
            done.returncode != 0
            and INVALID_JOB not in low
            and not any(a in low for a in ALREADY_DONE)
        ):
            raise SlurmError(f"scancel {job_id}: {first_line(done.stderr)}")


def first_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of ``text``, shortened (for one-line reasons)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:limit]
    return ""
