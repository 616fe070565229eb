"""SlurmSpawner: each worker runs as one Slurm batch job on a node Slurm picks.

``spawner_class = "slurm"``. The hub runs Slurm's own client commands (``sbatch``,
``scontrol``, ``scancel``) asynchronously (:mod:`.commands`); it never schedules
anything itself. One start, in order:

1. write the session's 0600 connection file (signing key, optional CurveZMQ secret key,
   the registration address and a one-time token) into the session's runtime directory,
   which must be on a filesystem the compute nodes share;
2. open a one-shot registration listener on ``registration_ip``
   (:mod:`.registration`);
3. submit the batch script (:mod:`.script`) with ``sbatch --parsable`` on stdin,
   with a minimal environment: the hub's secrets never reach Slurm or the job;
4. while the job waits, report its queue state through :meth:`progress` (pending with
   Slurm's reason, running on which node); if Slurm ends it first, fail with Slurm's
   words and the last line of the job's log;
5. on the node, the agent (:mod:`.agent`) starts the worker, which binds its
   channels on the node's address on ports it picks, and registers the endpoints with
   the hub over TCP, signed with the token. The hub never guesses a port on a node.

``poll`` asks ``scontrol show job`` (rate-limited by ``state_cache_seconds``); a job
Slurm ended (time limit, memory, node failure, ``scancel``) reports its exit status and
:meth:`exit_reason` says why in Slurm's terms. ``stop`` cancels the job and waits until
Slurm has cleaned it up. ``get_state`` keeps the job id, its name and the endpoints, so a
restarted hub re-adopts a running job (a reused job id with another name is not ours).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import zmq
from traitlets import Bool, Float, Integer, List, TraitError, Unicode, default, validate

from phoebe_kernel_worker.protocol import derive_curve_secret
from phoebe_kernel_worker.protocol.registration import REGISTRATION_FIELD

from ...channels import WorkerEndpoint
from ..base import Spawner, SpawnError
from . import script as batch
from .commands import JobInfo, SlurmCommands, SlurmError
from .registration import RegistrationError, RegistrationListener

LOG_TAIL_BYTES = 4096


class SlurmSpawner(Spawner):
    """Start workers as Slurm batch jobs (``spawner_class = "slurm"``; see docs/slurm.md)."""

    # --- where and how jobs run ---------------------------------------------------------

    partition = Unicode("", help="Slurm partition (``--partition``); empty: the default.").tag(
        config=True
    )
    account = Unicode("", help="Slurm account to charge (``--account``); empty: the default.").tag(
        config=True
    )
    qos = Unicode("", help="Quality of service (``--qos``); empty: the default.").tag(config=True)
    time_limit = Unicode(
        "",
        help="""Wall-clock limit of a session's job (``--time``, e.g. ``"8:00:00"``); empty:
        the partition's default. Slurm ends the job at the limit and the session fails
        with that reason.""",
    ).tag(config=True)
    extra_sbatch_options = List(
        Unicode(),
        help="""More ``sbatch`` options, one per item (e.g. ``["--gres=gpu:1",
        "--constraint=avx2"]``); each becomes an ``#SBATCH`` line.""",
    ).tag(config=True)
    prologue = Unicode(
        "",
        help="""Shell lines run in the batch script before the worker starts, e.g.
        ``module load python/3.11`` or ``source /opt/phoebe/venv/bin/activate``.""",
    ).tag(config=True)
    batch_template = Unicode(
        batch.DEFAULT_TEMPLATE,
        help="""The batch script; placeholders ``{{job_name}} {{output}} {{chdir}}
        {{sbatch_options}} {{prologue}} {{environment}} {{agent}}`` (see
        share/phoebe_spawner/slurm/batch_template.sh).""",
    ).tag(config=True)

    @validate("batch_template")
    def _check_template(self, proposal: Any) -> str:
        try:
            batch.check_template(proposal["value"])
        except batch.TemplateError as e:
            raise TraitError(str(e)) from None
        return str(proposal["value"])

    agent_cmd = List(
        Unicode(),
        help="""How the batch script starts the agent that runs the worker and registers it
        (the worker command, ``cmd``, follows it). The default uses the hub's own Python,
        which suits a venv on the shared filesystem.""",
    ).tag(config=True)

    @default("agent_cmd")
    def _default_agent_cmd(self) -> list[str]:
        return [sys.executable, "-m", "phoebe_kernel_worker.node_agent"]

    @default("ip")
    def _default_ip(self) -> str:
        return "auto"

    @default("start_timeout")
    def _default_start_timeout(self) -> float:
        return 900.0  # a queue may hold a job for minutes

    # --- the hub's side -----------------------------------------------------------------

    registration_ip = Unicode(
        "127.0.0.1",
        help="""The hub's address compute nodes can reach: the registration listener binds
        here and jobs connect to it. Set it to the hub's cluster-network address.""",
    ).tag(config=True)
    registration_port_range = List(
        Integer(),
        default_value=[],
        minlen=0,
        maxlen=2,
        help="""[low, high) ports for registration listeners (one per starting session, open
        only until its job registers); empty: any free port. Set it when a firewall sits
        between the nodes and the hub.""",
    ).tag(config=True)
    encrypt = Bool(
        False,
        help="""Encrypt the channels to the worker with CurveZMQ (keys per session). Turn it
        on whenever hub and workers talk over a network others can read (anything but a
        private, trusted cluster network); messages are signed either way.""",
    ).tag(config=True)
    slurm_conf = Unicode(
        "", help="``SLURM_CONF`` for the Slurm commands; empty: Slurm's default or the hub's env."
    ).tag(config=True)
    slurm_bin_dir = Unicode("", help="Directory of sbatch/scontrol/scancel; empty: PATH.").tag(
        config=True
    )
    command_timeout = Float(30.0, help="Seconds one Slurm command may take.").tag(config=True)
    command_retries = Integer(
        3, help="Retries of a Slurm command while the controller is unreachable."
    ).tag(config=True)
    retry_delay = Float(1.0, help="Seconds before the first retry (grows linearly).").tag(
        config=True
    )
    job_poll_interval = Float(
        2.0, help="Seconds between queue checks while a job is starting or stopping."
    ).tag(config=True)
    state_cache_seconds = Float(
        5.0,
        help="""``poll()`` asks the controller at most this often per session (the manager
        may poll more often); bounds the load a hub puts on slurmctld.""",
    ).tag(config=True)
    exit_grace = Float(
        3.0,
        help="""Seconds a stopping worker has to end its job by itself (the hub asks it to
        shut down on its control channel first) before it is sent SIGTERM.""",
    ).tag(config=True)
    term_timeout = Float(
        5.0,
        help="""Seconds a stopping worker has, after SIGTERM, to end its job by itself
        (recorded as COMPLETED) before the job is cancelled.""",
    ).tag(config=True)
    stop_timeout = Float(
        60.0, help="Seconds to wait for Slurm to end a cancelled job before giving up."
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job_id: str | None = None
        self.job_name = ""
        self.node = ""
        #: the worker's pid on its compute node: never a process of the hub's machine
        #: (so local_pid() stays None)
        self.node_pid: int | None = None
        self.exit_status: int | None = None
        self._exit_reason: str | None = None
        self._last_info: JobInfo | None = None
        self._last_query = 0.0

    @property
    def commands(self) -> SlurmCommands:
        return SlurmCommands(
            slurm_conf=self.slurm_conf,
            bin_dir=self.slurm_bin_dir,
            timeout=self.command_timeout,
            retries=self.command_retries,
            retry_delay=self.retry_delay,
        )

    # --- paths ----------------------------------------------------------------------------

    @property
    def connection_file(self) -> Path:
        return Path(self.runtime_dir) / "connection.json"

    @property
    def output_path(self) -> Path:
        """The job's stdout/stderr (Slurm writes it; ``%j`` is the job id)."""
        return Path(self.runtime_dir) / "slurm-%j.out"

    def log_tail(self, nbytes: int = LOG_TAIL_BYTES) -> str:
        """The end of the job's output (for failure reasons and admins)."""
        if not self.job_id:
            return ""
        path = Path(str(self.output_path).replace("%j", self.job_id))
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - nbytes))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # --- start ------------------------------------------------------------------------------

    async def start(self) -> WorkerEndpoint:
        if not self.runtime_dir:
            raise SpawnError("no runtime directory was assigned to this session")
        if self.encrypt and not zmq.has("curve"):
            raise SpawnError("encrypt is on, but this libzmq was built without CURVE")
        self.exit_status, self._exit_reason = None, None
        self.job_name = f"phoebe-{self.session_id}"
        token = secrets.token_hex(32)
        rng = self.registration_port_range
        listener = RegistrationListener(
            session_id=self.session_id,
            token=token,
            host=self.registration_ip,
            port_range=(rng[0], rng[1]) if len(rng) == 2 else None,
        )
        try:
            address = await listener.start()
        except RegistrationError as e:
            raise SpawnError(str(e)) from None
        try:
            self.emit_progress(5, "Submitting a Slurm job")
            self._prepare_files(address, token)
            script = self.batch_script()
            try:
                # the name on the command line too (it overrides the script's): the
                # re-adoption check relies on it, whatever a site's template does
                self.job_id = await self.commands.submit(
                    script, ["--export=ALL", f"--job-name={self.job_name}"]
                )
            except (SlurmError, batch.TemplateError) as e:
                raise SpawnError(str(e)) from None
            finally:
                if self.job_id is None:
                    self.connection_file.unlink(missing_ok=True)
            self.emit_progress(10, f"Slurm job {self.job_id} submitted")
            report = await self._wait_for_registration(listener)
        except BaseException:
            await listener.close()
            if self.job_id is not None:
                await self.stop(now=True)
            raise
        await listener.close()
        endpoint = self._adopt_report(report)
        self.emit_progress(100, f"Worker ready on {self.node or 'its node'}", done=True)
        self.log.debug("session %s: Slurm job %s ready: %s", self.session_id, self.job_id, report)
        return endpoint

    def _prepare_files(self, address: str, token: str) -> None:
        Path(self.runtime_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        Path(self.session_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        extra = {REGISTRATION_FIELD: {"address": address, "token": token}}
        info = self.connection_info(
            curve_secret_key=derive_curve_secret(self.key.encode()) if self.encrypt else None
        )
        info.extra.update(extra)
        info.exit_with_parent = False  # a job outlives nothing on the hub's machine
        self.write_connection_file(str(self.connection_file), info)

    def sbatch_options(self) -> list[str]:
        """The ``#SBATCH`` options from the traits (limits map to Slurm's own)."""
        options = []
        for flag, value in (
            ("--partition", self.partition),
            ("--account", self.account),
            ("--qos", self.qos),
            ("--time", self.time_limit),
        ):
            if value:
                options.append(f"{flag}={value}")
        if self.cpu_limit:
            options.append(batch.cpus_option(self.cpu_limit))
        if self.mem_limit:
            options.append(batch.mem_option(self.mem_limit))
        return [*options, *self.extra_sbatch_options]

    def batch_script(self) -> str:
        """The batch script for this session's job (no secrets in it)."""
        agent = [
            *self.agent_cmd,
            "--connection-file",
            str(self.connection_file),
            "--registration-timeout",
            f"{max(30.0, self.start_timeout):g}",
            "--",
            *self.cmd,
            *self.worker_args,
        ]
        return batch.render(
            self.batch_template,
            {
                "job_name": batch.single_line("job name", self.job_name),
                "output": batch.single_line("output", str(self.output_path)),
                "chdir": batch.single_line("runtime_dir", self.runtime_dir),
                "sbatch_options": batch.sbatch_lines(self.sbatch_options()),
                "prologue": self.prologue,
                "environment": batch.export_lines(self.get_env()),
                "agent": batch.agent_command(agent),
            },
        )

    async def _wait_for_registration(self, listener: RegistrationListener) -> dict[str, Any]:
        """Report queue state until the agent registers; SpawnError if the job ends first."""
        assert self.job_id is not None
        deadline = time.monotonic() + self.start_timeout
        future = listener.report_future
        last_message = ""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SpawnError(
                    f"worker did not become ready within {self.start_timeout:g} s"
                    + (f" ({last_message})" if last_message else "")
                )
            await asyncio.wait({future}, timeout=min(self.job_poll_interval, remaining))
            if future.done():
                report = future.result()
                if report["job_id"] and report["job_id"] != self.job_id:
                    raise SpawnError(f"registration came from job {report['job_id']}")
                return report
            info = await self._query(max_age=0)
            if info is None:
                continue
            if info.finished:
                await asyncio.sleep(0)  # a registration racing the job's end still wins
                if future.done():
                    continue
                raise SpawnError(self._failure_reason(info))
            message = info.queue_message()
            if message != last_message:
                last_message = message
                self.emit_progress(20 if info.pending else 50, message)

    def _failure_reason(self, info: JobInfo) -> str:
        lines = self.log_tail().strip().splitlines()
        last = lines[-1].strip()[:300] if lines else ""
        what = f"{info.describe()}, before the worker registered"
        return f"{what}: {last}" if last else what

    def _adopt_report(self, report: dict[str, Any]) -> WorkerEndpoint:
        server_key = None
        if self.encrypt:
            server_key = zmq.curve_public(derive_curve_secret(self.key.encode()).encode()).decode()
        self.node = report["host"]
        self.node_pid = report["pid"] or None
        return WorkerEndpoint(**report["endpoints"], curve_server_key=server_key)

    # --- poll / stop ------------------------------------------------------------------------

    async def _query(self, *, max_age: float) -> JobInfo | None:
        """The job's state, at most ``max_age`` s old; None when the controller is unreachable.

        Records the exit status and reason once Slurm says the job ended (or forgot it).
        """
        assert self.job_id is not None
        now = time.monotonic()
        if self._last_info is not None and now - self._last_query < max_age:
            return self._last_info
        try:
            info = await self.commands.job(self.job_id)
        except SlurmError as e:
            self.log.warning("session %s: Slurm job state unknown: %s", self.session_id, e)
            return None
        self._last_query = time.monotonic()
        if info is None:
            info = JobInfo(self.job_id, "UNKNOWN", reason="purged by the controller")
            self._set_exit(1, f"Slurm job {self.job_id} is no longer known to the controller")
        elif self.job_name and info.name and info.name != self.job_name:
            info = JobInfo(self.job_id, "UNKNOWN", reason="job id reused")
            self._set_exit(1, f"Slurm job id {self.job_id} now belongs to another job")
        elif info.finished:
            self._set_exit(info.exit_status(), info.describe())
        self._last_info = info
        return info

    def _set_exit(self, status: int, reason: str) -> None:
        if self.exit_status is None:
            self.exit_status, self._exit_reason = status, reason

    async def poll(self) -> int | None:
        if self.job_id is None:
            return self.exit_status if self.exit_status is not None else 0
        if self.exit_status is not None:
            return self.exit_status
        await self._query(max_age=self.state_cache_seconds)
        return self.exit_status

    def exit_reason(self, status: int | None = None) -> str | None:
        return self._exit_reason

    async def stop(self, now: bool = False) -> None:
        if self.job_id is None:
            return
        info = await self._query(max_age=0)
        if info is not None and info.state == "UNKNOWN":
            self._finish()
            return
        running = info is None or info.state == "RUNNING"
        if (
            not now
            and running
            and (
                await self._wait_finished(self.exit_grace)
                or await self._signal_and_wait("TERM", self.term_timeout)
            )
        ):
            self._finish()
            return
        if info is None or not info.finished:
            try:
                if now:
                    await self.commands.cancel(self.job_id, signal_name="KILL")
                await self.commands.cancel(self.job_id)
            except SlurmError as e:
                self.log.error("session %s: %s", self.session_id, e)
        if not await self._wait_finished(self.stop_timeout):
            self.log.error(
                "session %s: Slurm job %s did not end within %g s",
                self.session_id,
                self.job_id,
                self.stop_timeout,
            )
        self._finish()

    async def _signal_and_wait(self, signal_name: str, timeout: float) -> bool:
        """Signal the batch script (the agent passes it to the worker); True if the job
        then ended by itself within ``timeout``."""
        assert self.job_id is not None
        try:
            await self.commands.cancel(self.job_id, signal_name=signal_name, batch_only=True)
        except SlurmError as e:
            self.log.warning("session %s: %s", self.session_id, e)
            return False
        return await self._wait_finished(timeout)

    async def _wait_finished(self, timeout: float) -> bool:
        """Wait until Slurm has ended and cleaned up the job; False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            info = await self._query(max_age=0)
            if info is not None and info.finished:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(min(self.job_poll_interval, 0.2))

    def _finish(self) -> None:
        if self.exit_status is None:
            self._set_exit(1, f"Slurm job {self.job_id} was stopped")
        if self.runtime_dir:
            self.connection_file.unlink(missing_ok=True)

    # --- state ------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.job_id is not None:
            state.update(
                job_id=self.job_id,
                job_name=self.job_name,
                node=self.node,
                pid=self.node_pid,
                runtime_dir=self.runtime_dir,
            )
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        if state.get("job_id"):
            self.job_id = str(state["job_id"])
            self.job_name = str(state.get("job_name") or "")
            self.node = str(state.get("node") or "")
            self.node_pid = int(state["pid"]) if state.get("pid") else None
            self.runtime_dir = state.get("runtime_dir") or self.runtime_dir

    def clear_state(self) -> None:
        super().clear_state()
        if self.runtime_dir:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
        self.job_id = None
        self.job_name = ""
        self.node = ""
        self.node_pid = None
        self.exit_status = None
        self._exit_reason = None
        self._last_info = None
