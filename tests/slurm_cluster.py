"""A private single-node Slurm cluster for the ``slurm`` test tier.

Started once per test run (the ``slurm_cluster`` fixture in ``tests/conftest.py``) as
root from Debian's ``slurm-wlm`` and ``munge`` packages, with everything of its own: a
``slurm.conf`` reached through ``SLURM_CONF``, a fresh munge key and ``munged`` on a
private socket, state/spool/log directories in one temporary directory, and free ports
for ``slurmctld`` and ``slurmd``. The system's ``/etc/slurm`` and ``/etc/munge`` are
never used.

The compute node runs in its own network namespace, joined to the test's namespace by
a veth pair (``10.x.y.1`` on the hub's side, ``10.x.y.2`` on the node's side), so a
worker in a job really is on another host from the hub's point of view: it binds on the
node's address and can reach the hub only through ``10.x.y.1``. Isolation is asked for
by default and never silently dropped: where the machine cannot make namespaces (not
root, no ``ip netns``, no CAP_NET_ADMIN) the cluster is unavailable (the tests skip with
that reason, and CI's ``PHOEBE_SPAWNER_REQUIRE_ALL=1`` turns the skip into a failure);
where it can but making one fails, :meth:`SlurmCluster.start` raises
:class:`IsolationFailed`. Only ``SlurmCluster(isolate=False)`` runs the node on the
test's own network (127.0.0.1).

The daemons run in the foreground as children of the test process (``-D``), which
starts them before any test's leak check takes its snapshot; job processes are their
descendants, so a job a test leaves running shows up as a leaked child of that test.
:meth:`SlurmCluster.stop` asserts the queue is empty, cancels what is left, stops the
daemons, deletes the namespace and the directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

NODE_NAME = "node1"
PARTITION = "debug"
NODE_CPUS = 2
NODE_MEMORY_MIB = 4096
#: run by ``sh -c`` inside the node's namespace before ``exec slurmd`` ("$@")
CGROUP_MOUNTS = (
    "mount -t tmpfs cgroup_root /sys/fs/cgroup && for c in freezer cpuset memory devices; "
    "do mkdir -p /sys/fs/cgroup/$c && mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c; "
    'done; exec "$@"'
)
COMMANDS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")


class ClusterUnavailable(Exception):
    """The cluster cannot be started here; ``str()`` is the reason tests skip with."""


class IsolationFailed(Exception):
    """The node's network namespace was asked for, the machine can make one, and making
    it failed: the cluster does not start (tests fail, they do not skip)."""


#: CAP_NET_ADMIN's bit in the capability sets of /proc/<pid>/status
CAP_NET_ADMIN = 12


def isolation_unavailable() -> str | None:
    """Why this machine cannot give the node a network namespace of its own, or None."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None:
        return "no `ip` program (iproute2)"
    with open("/proc/self/status") as f:
        caps = dict(line.split(":", 1) for line in f if ":" in line)
    if not int(caps.get("CapEff", "0").strip(), 16) >> CAP_NET_ADMIN & 1:
        return "no CAP_NET_ADMIN"
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"`ip netns` does not work here: {done.stderr.strip()[:200]}"
    return None


def missing_programs() -> list[str]:
    """Programs the cluster needs that are not installed."""
    needed = ["slurmctld", "slurmd", "munged", "mungekey", *COMMANDS]
    search = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [p for p in needed if shutil.which(p, path=search) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _used_subnets() -> set[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=False)
    used = set()
    for line in out.stdout.splitlines():
        for word in line.split():
            if word.count(".") == 3 and "/" in word:
                used.add(".".join(word.split("/")[0].split(".")[:3]))
    return used


class SlurmCluster:
    """One private Slurm cluster: controller on the test's side, one node in a netns."""

    def __init__(self, *, isolate: bool = True) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="phoebe-spawner-slurm-"))
        self.base.chmod(0o755)
        self.conf = self.base / "slurm.conf"
        self.munge_dir = self.base / "munge"
        self.munge_socket = self.munge_dir / "munge.sock"
        self.ctld_port = _free_port()
        self.slurmd_port = _free_port()
        self.hostname = socket.gethostname().split(".")[0]
        tag = f"{os.getpid() % 100000}"
        self.netns = f"phoebe-slurm-{tag}"
        self.veth_hub, self.veth_node = f"psh{tag}", f"psn{tag}"
        self.isolated = False
        #: a network namespace for the node was asked for (the default)
        self.want_isolation = isolate
        self.hub_ip = self.node_ip = "127.0.0.1"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # --- environment for clients --------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """The environment Slurm client commands need (``SLURM_CONF``)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> str:
        """Run one Slurm client command against this cluster; returns its stdout."""
        done = subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr}")
        return done.stdout

    def queue(self) -> list[str]:
        """Ids and states of the jobs still queued, running or completing."""
        out = self.run("squeue", "-h", "-t", "PD,R,CG,CF,S", "-o", "%i %T")
        return [line for line in out.splitlines() if line.strip()]

    # --- start ----------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        """Start munged, the network namespace, slurmctld and slurmd; wait for an idle node."""
        missing = missing_programs()
        if missing:
            raise ClusterUnavailable(
                f"Slurm is not installed (missing {', '.join(missing)}; Debian packages "
                "slurm-wlm and munge, .ci/system-packages installs them)"
            )
        if os.geteuid() != 0:
            raise ClusterUnavailable("the private Slurm cluster must be started as root")
        if self.want_isolation:
            reason = isolation_unavailable()
            if reason:
                raise ClusterUnavailable(
                    f"the compute node cannot get a network of its own ({reason}), so a "
                    "worker would not be on another host"
                )
        try:
            if self.want_isolation:
                self._make_netns()
            self._start_munge()
            self._write_conf()
            for sub in ("state", "spool", "log"):
                (self.base / sub).mkdir(mode=0o755, exist_ok=True)
            self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
            slurmd = ["slurmd", "-D", "-N", NODE_NAME, "-f", str(self.conf)]
            if self.isolated:
                # ``ip netns exec`` mounts a fresh /sys without cgroups, which slurmd
                # initialises even with task/none: give its mount namespace its own
                slurmd = [
                    "ip",
                    "netns",
                    "exec",
                    self.netns,
                    "sh",
                    "-c",
                    CGROUP_MOUNTS,
                    "sh",
                    *slurmd,
                ]
            self._spawn("slurmd", slurmd)
            self._wait_idle(time.monotonic() + timeout)
        except BaseException:
            self.stop(check_queue=False)
            raise

    def _make_netns(self) -> None:
        used = _used_subnets()
        prefix = next(
            (
                f"10.213.{n}"
                for n in range(os.getpid() % 200 + 20, 250)
                if f"10.213.{n}" not in used
            ),
            None,
        )
        if prefix is None:
            raise IsolationFailed("no free 10.213.x.0/24 subnet for the node's network")
        steps = [
            ["ip", "netns", "add", self.netns],
            ["ip", "link", "add", self.veth_hub, "type", "veth", "peer", "name", self.veth_node],
            ["ip", "link", "set", self.veth_node, "netns", self.netns],
            ["ip", "addr", "add", f"{prefix}.1/24", "dev", self.veth_hub],
            ["ip", "link", "set", self.veth_hub, "up"],
            ["ip", "-n", self.netns, "addr", "add", f"{prefix}.2/24", "dev", self.veth_node],
            ["ip", "-n", self.netns, "link", "set", self.veth_node, "up"],
            ["ip", "-n", self.netns, "link", "set", "lo", "up"],
        ]
        for argv in steps:
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                self._delete_netns()
                raise IsolationFailed(
                    f"making the node's network failed at `{' '.join(argv)}`: "
                    f"{done.stderr.strip()[:300]}"
                )
        self.isolated = True
        self.hub_ip, self.node_ip = f"{prefix}.1", f"{prefix}.2"

    def _start_munge(self) -> None:
        self.munge_dir.mkdir(mode=0o700)
        key = self.munge_dir / "munge.key"
        subprocess.run(
            ["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True
        )
        key.chmod(0o600)
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={self.munge_dir / 'munged.pid'}",
                f"--log-file={self.munge_dir / 'munged.log'}",
                f"--seed-file={self.munge_dir / 'munged.seed'}",
            ],
        )
        deadline = time.monotonic() + 10
        while not self.munge_socket.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise ClusterUnavailable("munged did not create its socket")
            time.sleep(0.05)

    def _write_conf(self) -> None:
        b = self.base
        node_line = (
            f"NodeName={NODE_NAME} NodeAddr={self.node_ip} NodeHostname={self.hostname} "
            f"CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MIB} State=UNKNOWN"
        )
        self.conf.write_text(
            f"""# private test cluster written by tests/slurm_cluster.py
ClusterName=phoebetest
SlurmctldHost={self.hostname}({self.hub_ip})
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={b}/state
SlurmdSpoolDir={b}/spool
SlurmctldPidFile={b}/slurmctld.pid
SlurmdPidFile={b}/slurmd.pid
SlurmctldLogFile={b}/log/slurmctld.log
SlurmdLogFile={b}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=300
DefMemPerCPU=256
KillWait=2
OverTimeLimit=0
InactiveLimit=0
MessageTimeout=10
SlurmctldTimeout=30
SlurmdTimeout=60
{node_line}
PartitionName={PARTITION} Nodes={NODE_NAME} Default=YES MaxTime=INFINITE State=UP
"""
        )
        self.conf.chmod(0o644)
        cgroup_conf = self.base / "cgroup.conf"
        cgroup_conf.write_text("CgroupPlugin=cgroup/v1\nCgroupMountpoint=/sys/fs/cgroup\n")
        cgroup_conf.chmod(0o644)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.base / f"{name}.out", "ab")  # noqa: SIM115 - closed with the process
        try:
            self.procs[name] = subprocess.Popen(
                argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ClusterUnavailable(
                    f"{name} exited with status {proc.returncode}: {self.log_tail(name)}"
                )

    def log_tail(self, name: str, lines: int = 5) -> str:
        """The last lines a daemon printed (for skip reasons)."""
        paths = [self.base / f"{name}.out", self.base / "log" / f"{name}.log"]
        text = ""
        for path in paths:
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace")
        return " | ".join(text.strip().splitlines()[-lines:])

    def _wait_idle(self, deadline: float) -> None:
        state = ""
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                state = self.run("sinfo", "-h", "-n", NODE_NAME, "-o", "%T", timeout=10).strip()
            except (RuntimeError, subprocess.TimeoutExpired):
                state = "controller not answering"
            if state == "idle":
                return
            time.sleep(0.2)
        raise ClusterUnavailable(
            f"the Slurm node did not become idle (last state: {state!r}): {self.log_tail('slurmd')}"
        )

    def daemon_pids(self) -> set[int]:
        """The daemons' pids and slurmctld's helper (``slurmscriptd``), not the jobs'."""
        pids = {proc.pid for proc in self.procs.values()}
        ctld = self.procs.get("slurmctld")
        if ctld is not None:
            with contextlib.suppress(psutil.Error):
                pids.update(child.pid for child in psutil.Process(ctld.pid).children())
        return pids

    # --- stop -----------------------------------------------------------------------------

    def stop(self, *, check_queue: bool = True) -> list[str]:
        """Cancel what is left, stop the daemons, delete the namespace and the directory.

        Returns the jobs that were still in the queue (the fixture asserts it is empty).
        """
        left: list[str] = []
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                left = self.queue() if check_queue else []
                self.run("scancel", "--full", "-u", "root", check=False)
                deadline = time.monotonic() + 15
                while self.queue() and time.monotonic() < deadline:
                    time.sleep(0.2)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._delete_netns()
        shutil.rmtree(self.base, ignore_errors=True)
        return left

    def _delete_netns(self) -> None:
        if not self.want_isolation:
            return
        subprocess.run(["ip", "link", "del", self.veth_hub], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)
        self.isolated = False
