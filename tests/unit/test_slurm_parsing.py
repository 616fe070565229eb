"""Parsers and renderers of the Slurm backend, against output captured from Slurm 22.05.

The ``scontrol show job -o`` lines below were printed by the private test cluster
(tests/slurm_cluster.py, Debian 12's slurm-wlm 22.05.8); the temporary paths were
shortened, and the CANCELLED line lost fields the parser does not read.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from phoebe_kernel_worker.node_agent import split_address
from phoebe_kernel_worker.protocol.registration import registration_message, verify_registration
from phoebe_spawner.spawners.slurm import script as batch
from phoebe_spawner.spawners.slurm.commands import (
    JobInfo,
    SlurmError,
    is_unreachable,
    parse_sbatch,
    parse_scontrol_fields,
    parse_scontrol_job,
)

FAILED = (
    "JobId=1 JobName=wrap UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901759 "
    "Nice=0 Account=(null) QOS=(null) JobState=FAILED Reason=NonZeroExitCode "
    "Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=3:0 RunTime=00:00:01 "
    "TimeLimit=UNLIMITED TimeMin=N/A SubmitTime=2026-11-22T08:13:43 "
    "EligibleTime=2026-11-22T08:13:43 AccrueTime=2026-11-22T08:13:43 "
    "StartTime=2026-11-22T08:13:45 EndTime=2026-11-22T08:13:46 Deadline=N/A SuspendTime=None "
    "SecsPreSuspend=0 LastSchedEval=2026-11-22T08:13:45 Scheduler=Main Partition=debug "
    "AllocNode:Sid=localhost:22779 ReqNodeList=(null) ExcNodeList=(null) NodeList=node1 "
    "BatchHost=node1 NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* "
    "TRES=cpu=1,mem=4G,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* "
    "MinCPUsNode=1 MinMemoryNode=0 MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 "
    "OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=(null) "
    "WorkDir=/work/wt-slurm StdErr=/tmp/s/o.txt StdIn=/dev/null StdOut=/tmp/s/o.txt Power= \n"
)
PENDING = (
    "JobId=3 JobName=wrap UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901757 "
    "Nice=0 Account=(null) QOS=(null) JobState=PENDING Reason=Resources Dependency=(null) "
    "Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 "
    "TimeLimit=UNLIMITED TimeMin=N/A SubmitTime=2026-11-22T08:13:47 "
    "EligibleTime=2026-11-22T08:13:47 AccrueTime=2026-11-22T08:13:47 StartTime=Unknown "
    "EndTime=Unknown Deadline=N/A SuspendTime=None SecsPreSuspend=0 "
    "LastSchedEval=2026-11-22T08:13:48 Scheduler=Main Partition=debug "
    "AllocNode:Sid=localhost:22779 ReqNodeList=(null) ExcNodeList=(null) NodeList= NumNodes=1 "
    "NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=4G,node=1,billing=1 "
    "Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryNode=0 "
    "MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 "
    "Licenses=(null) Network=(null) Command=(null) WorkDir=/work/wt-slurm "
    "StdErr=/work/wt-slurm/slurm-3.out StdIn=/dev/null StdOut=/work/wt-slurm/slurm-3.out Power= \n"
)
CANCELLED = (
    "JobId=2 JobName=wrap UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901758 "
    "Nice=0 Account=(null) QOS=(null) JobState=CANCELLED Reason=None Dependency=(null) "
    "Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:15 RunTime=00:00:00 "
    "TimeLimit=UNLIMITED TimeMin=N/A NodeList=node1 BatchHost=node1 NumNodes=1 NumCPUs=2 "
    "TRES=cpu=2,mem=4G,node=1,billing=2 Command=(null) WorkDir=/work/wt-slurm Power= \n"
)
TIMEOUT = (
    "JobId=1 JobName=phoebe-cap UserId=root(0) GroupId=root(0) MCS_label=N/A "
    "Priority=4294901759 Nice=0 Account=(null) QOS=(null) JobState=TIMEOUT Reason=TimeLimit "
    "Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:15 "
    "RunTime=00:01:27 TimeLimit=00:01:00 TimeMin=N/A SubmitTime=2026-11-22T08:19:55 "
    "EligibleTime=2026-11-22T08:19:55 AccrueTime=2026-11-22T08:19:55 "
    "StartTime=2026-11-22T08:19:57 EndTime=2026-11-22T08:21:24 Deadline=N/A SuspendTime=None "
    "SecsPreSuspend=0 LastSchedEval=2026-11-22T08:19:57 Scheduler=Main Partition=debug "
    "AllocNode:Sid=localhost:22779 ReqNodeList=(null) ExcNodeList=(null) NodeList=node1 "
    "BatchHost=node1 NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* "
    "TRES=cpu=1,mem=256M,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* "
    "MinCPUsNode=1 MinMemoryCPU=256M MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 "
    "OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=(null) "
    "WorkDir=/work/wt-slurm StdErr=/dev/null StdIn=/dev/null StdOut=/dev/null Power= \n"
)
INVALID_STDERR = "slurm_load_jobs error: Invalid job id specified\n"
UNREACHABLE_STDERR = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"
SBATCH_UNREACHABLE = (
    "sbatch: error: Batch job submission failed: "
    "Unable to contact slurm controller (connect failure)\n"
)
SCANCEL_UNREACHABLE = (
    "scancel: error: Kill job error on job id 1: "
    "Unable to contact slurm controller (connect failure)\n"
)


def test_sbatch_parsable():
    assert parse_sbatch("1\n") == "1"
    assert parse_sbatch("42;phoebetest\n") == "42"
    assert parse_sbatch("sbatch: warning: something\n17\n") == "17"
    for bad in ("", "\n", "Submitted batch job 5\n"):
        with pytest.raises(SlurmError, match="no job id"):
            parse_sbatch(bad)


def test_scontrol_fields_keep_values_with_equals_and_colons():
    fields = parse_scontrol_fields(FAILED)
    assert fields["TRES"] == "cpu=1,mem=4G,node=1,billing=1"
    assert fields["AllocNode:Sid"] == "localhost:22779"
    assert fields["ReqB:S:C:T"] == "0:0:*:*"
    assert fields["Power"] == ""
    assert fields["StdOut"] == "/tmp/s/o.txt"


def test_scontrol_job_states():
    failed = parse_scontrol_job(FAILED, "1")
    assert failed == JobInfo("1", "FAILED", "NonZeroExitCode", "wrap", "node1", 3, 0, "UNLIMITED")
    assert failed.finished and not failed.active and failed.exit_status() == 3
    assert "failed (FAILED, reason NonZeroExitCode)" in failed.describe()
    assert failed.describe().endswith("the worker exited with status 3")

    pending = parse_scontrol_job(PENDING, "3")
    assert pending is not None and pending.pending and pending.active and not pending.finished
    assert pending.nodes == "" and pending.queue_message() == "Slurm job 3 is pending (Resources)"

    cancelled = parse_scontrol_job(CANCELLED, "2")
    assert cancelled is not None and cancelled.exit_status() == -signal.SIGTERM
    assert "was cancelled" in cancelled.describe() and "SIGTERM" in cancelled.describe()

    timeout = parse_scontrol_job(TIMEOUT, "1")
    assert timeout is not None and timeout.finished and timeout.name == "phoebe-cap"
    assert timeout.describe().startswith(
        "Slurm job 1 reached its time limit (TIMEOUT, reason TimeLimit, limit 00:01:00)"
    )


def test_scontrol_job_picks_the_right_line_and_handles_absence():
    both = PENDING + FAILED
    assert parse_scontrol_job(both, "1").state == "FAILED"  # type: ignore[union-attr]
    assert parse_scontrol_job(both, "3").state == "PENDING"  # type: ignore[union-attr]
    assert parse_scontrol_job(both, "11") is None  # "1" must not match "11"
    assert parse_scontrol_job("", "1") is None


def test_exit_status_of_jobs_slurm_ended_without_a_code():
    assert JobInfo("5", "NODE_FAIL").exit_status() == 1
    assert JobInfo("5", "CANCELLED").exit_status() == 1  # cancelled while pending
    assert JobInfo("5", "COMPLETED").exit_status() == 0
    assert JobInfo("5", "OUT_OF_MEMORY", exit_signal=9).exit_status() == -9
    assert "ran out of memory" in JobInfo("5", "OUT_OF_MEMORY").describe()
    assert "node failed" in JobInfo("5", "NODE_FAIL").describe()
    assert not JobInfo("5", "COMPLETING").finished  # still cleaning up on the node


def test_unreachable_controller_is_recognised():
    assert is_unreachable(UNREACHABLE_STDERR)
    assert is_unreachable(SBATCH_UNREACHABLE) and is_unreachable(SCANCEL_UNREACHABLE)
    assert is_unreachable("squeue: error: Socket timed out on send/recv operation")
    assert not is_unreachable(INVALID_STDERR)
    assert not is_unreachable("")


# --- the batch script -------------------------------------------------------------------


def test_render_fills_placeholders_and_rejects_unknown_ones():
    values = {name: f"<{name}>" for name in batch.PLACEHOLDERS}
    script = batch.render(batch.DEFAULT_TEMPLATE, values)
    assert "{{" not in script and script.startswith("#!/bin/bash\n")
    assert "#SBATCH --job-name=<job_name>" in script and script.rstrip().endswith("exec <agent>")
    with pytest.raises(batch.TemplateError, match="unknown placeholder"):
        batch.render("{{agent}} {{partiton}}", values)
    with pytest.raises(batch.TemplateError, match="must run"):
        batch.check_template("#!/bin/bash\necho no agent\n")
    # bash's own braces are left alone
    assert batch.render('echo "${HOME}" {{agent}}', values) == 'echo "${HOME}" <agent>'


def test_sbatch_lines_refuse_injection():
    assert batch.sbatch_lines(["--partition=debug", "--exclusive"]) == (
        "#SBATCH --partition=debug\n#SBATCH --exclusive"
    )
    for bad in ("--partition=debug\nrm -rf /", "partition=debug", "--qos=", "; echo"):
        with pytest.raises(batch.TemplateError):
            batch.sbatch_lines([bad])
    with pytest.raises(batch.TemplateError):
        batch.single_line("output", "/tmp/x\n#SBATCH --exclusive")


def test_exports_are_quoted():
    lines = batch.export_lines({"A": "x y", "B": "$(reboot)", "C": "it's"})
    assert lines.splitlines() == ["export A='x y'", "export B='$(reboot)'", "export C='it'\"'\"'s'"]
    with pytest.raises(batch.TemplateError):
        batch.export_lines({"BAD NAME": "x"})


def test_limits_map_to_slurm_units():
    assert batch.mem_option(2 * 1024**3) == "--mem=2048M"
    assert batch.mem_option(1000) == "--mem=1M"  # never 0 (which means "all")
    assert batch.cpus_option(2) == "--cpus-per-task=2"
    assert batch.cpus_option(0.5) == "--cpus-per-task=1"
    assert batch.cpus_option(2.5) == "--cpus-per-task=3"


# --- the registration message -----------------------------------------------------------


def test_registration_signature():
    token = "ab" * 32
    line = registration_message(token, {"session_id": "s", "endpoints": {}})
    assert verify_registration(token, line)["session_id"] == "s"
    with pytest.raises(ValueError, match="signature"):
        verify_registration("cd" * 32, line)
    tampered = line.replace(b'\\"s\\"', b'\\"t\\"')
    assert tampered != line
    with pytest.raises(ValueError, match="signature"):
        verify_registration(token, tampered)
    for junk in (b"", b"not json\n", b'{"body": 1}\n', b"[]\n"):
        with pytest.raises(ValueError, match="malformed"):
            verify_registration(token, junk)


def test_split_address():
    assert split_address("10.0.0.1:5000") == ("10.0.0.1", 5000)
    assert split_address("[fd00::1]:5000") == ("fd00::1", 5000)


def test_the_agent_imports_neither_traitlets_nor_tornado_nor_the_hub():
    # the agent runs on compute nodes, from the worker distribution: standard library and
    # the worker protocol only
    code = (
        "import sys\n"
        "import phoebe_kernel_worker.node_agent\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in\n"
        "                ('traitlets', 'tornado', 'sqlalchemy', 'phoebe_spawner', 'phoebe'))\n"
        "print(' '.join(loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == []
