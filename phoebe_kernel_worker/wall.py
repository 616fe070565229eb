"""The OS-level wall a local worker puts up around itself before it serves anyone.

Called by :func:`phoebe_kernel_worker.__main__.run_session` (cold and forked workers
alike) once the worker has read its connection file and entered its session directory,
and before it builds the session, binds a socket or starts a thread. The policy comes
from the hub, in the connection file's ``wall`` field (see
:mod:`phoebe_spawner.spawners.wall`); without one, nothing is done.

In order:

1. **A dedicated uid** (only when the worker starts as root, i.e. the hub runs as
   root): the session directory is given to the uid (mode 0700). Directories other
   users cannot traverse on the way to it (the 0700 data directory) or to the Python
   installation (``/root``) are, in a private mount namespace, replaced by an empty 0711
   tmpfs holding only the entries on the way (bind mounts keeping their own modes): the
   worker sees its own session directory at its usual path, and nothing else of the
   data directory. Then ``setgroups([])``, ``setresgid``, ``setresuid``; the worker
   can never regain root.
2. **No new privileges** (``PR_SET_NO_NEW_PRIVS``): no set-uid program, no file
   capability can raise what the worker or its children may do.
3. **Landlock** (kernel 5.13+; all rights the running kernel knows are handled):
   read-only access to the system and Python paths, read-write access to the session
   directory only; TCP bind only on the worker's own ports and no TCP connect at all
   (ABI 4+); no signals to, and no abstract unix sockets of, processes outside the
   worker's domain (ABI 6+). Landlock also forbids ptrace of any process outside the
   domain (the hub, the fork server, other workers), which covers their
   ``/proc/<pid>/environ``, ``mem``, ``fd`` and ``cwd``.

4. **seccomp**: no unix socket can be created (``socket(AF_UNIX)`` fails with
   ``EACCES``), so a worker cannot reach the pathname sockets of its user that Landlock
   does not cover (the fork server's, a Docker or D-Bus socket); system calls of another
   architecture's ABI (i386, x32) are refused as a whole.

Every layer is enforced by the kernel: a refused read is ``EACCES``/``EPERM`` from the
system call, whatever Python code runs in the worker afterwards.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
import tempfile
from collections.abc import Iterable
from typing import Any

from phoebe_kernel_worker.protocol.landlock import (
    SYS_LANDLOCK_CREATE_RULESET,
    landlock_abi,
)
from phoebe_kernel_worker.protocol.landlock import libc as _libc

log = logging.getLogger("phoebe_kernel_worker.wall")

PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_RULE_NET_PORT = 2

# file-system rights, by the ABI that introduced them
FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_ABI1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ_RIGHTS = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

CLONE_NEWNS = 0x00020000
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_NOSUID = 2
MS_NODEV = 4

#: files a worker may read (and write: /dev/null) outside its read paths
DEVICE_FILES = {"/dev/null": FS_READ_FILE | FS_WRITE_FILE, "/dev/zero": FS_READ_FILE}
DEVICE_FILES |= dict.fromkeys(("/dev/urandom", "/dev/random", "/dev/full"), FS_READ_FILE)


class WallError(Exception):
    """A layer the policy requires cannot be put up (the worker refuses to start)."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def _prctl(option: int, arg: int) -> int:
    libc = _libc()
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return 0


def enter(
    policy: dict[str, Any] | None, session_dir: str, port_range: tuple[int, int] | None = None
) -> str:
    """Put up the wall ``policy`` describes around this (single-threaded) process.

    The process must already be in ``session_dir``; ``port_range`` are the ports it may
    bind (None: any the kernel picks, i.e. port 0). Returns a one-line summary for the
    worker's log; raises :class:`WallError` when a required layer is unavailable.
    """
    if not policy:
        return "no wall (the hub sent no policy)"
    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
    if threads > 1:
        raise WallError(f"the wall must go up before any thread starts ({threads} running)")
    layers = []
    uid = policy.get("uid")
    read_paths = [p for p in policy.get("read") or [] if isinstance(p, str)]
    if uid is not None:
        if os.geteuid() != 0:
            raise WallError(f"asked to run as uid {uid} but not started as root")
        opened = _open_rules(read_paths, policy)  # as root: every path can be opened
        _become(int(uid), int(policy.get("gid", uid)), session_dir, read_paths)
        layers.append(f"uid {uid}")
    elif os.geteuid() == 0:
        raise WallError("a worker never runs as root: the hub sent no uid to run as")
    else:
        opened = None
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    layers.append("no-new-privs")
    mode = policy.get("landlock", "auto")
    if mode != "off":
        abi = landlock_abi()
        if abi < 1:
            if mode == "required":
                raise WallError("Landlock is required but this kernel does not offer it")
            layers.append("no Landlock (not offered by this kernel)")
        else:
            if opened is None:
                opened = _open_rules(read_paths, policy)
            ports = list(range(*port_range)) if port_range else [0]
            layers.append(_landlock(abi, opened, ports))
    if policy.get("seccomp", True):
        layers.append(_seccomp())
    if uid is not None or mode != "off":
        os.environ["TMPDIR"] = session_dir  # the only place it can write
        tempfile.tempdir = None
        os.environ.setdefault("HOME", session_dir)  # the uid has no account (Path.home())
    return "wall: " + ", ".join(layers)


# --- uid ----------------------------------------------------------------------------------


def _become(uid: int, gid: int, session_dir: str, read_paths: list[str]) -> None:
    """Give the session directory to ``uid`` and become it for good (from root)."""
    _chown_tree(".", uid, gid)
    os.chmod(".", 0o700)
    bridge([*read_paths, session_dir])
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or 0 in os.getresgid():
        raise WallError("dropping root did not take")


def bridge(paths: list[str]) -> None:
    """Make ``paths`` reachable by any uid (from root, before dropping it): when a
    directory on the way cannot be traversed by others, this process moves to a private
    mount namespace where that directory shows only the entries leading to ``paths``.

    Called by :func:`enter`; the wall tests use it to run a hub as ``nobody``."""
    locked = _locked_ancestors(paths)
    if locked:
        _open_traversal(locked, paths)


def _chown_tree(top: str, uid: int, gid: int) -> None:
    """Hand ``top`` and what is in it to ``uid``, never following links (restored files)."""
    os.chown(top, uid, gid, follow_symlinks=False)
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode) or st.st_nlink == 1:
                os.chown(path, uid, gid, follow_symlinks=False)


def _locked_ancestors(paths: Iterable[str]) -> list[str]:
    """Directories above ``paths`` that other users cannot traverse (e.g. ``/root``)."""
    locked: set[str] = set()
    for path in paths:
        parts = os.path.abspath(path).split(os.sep)[1:-1]
        current = ""
        for part in parts:
            current += os.sep + part
            try:
                mode = os.stat(current).st_mode
            except OSError:
                break
            if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
                locked.add(current)
    return sorted(locked, key=lambda p: p.count(os.sep))


def _mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None
) -> None:
    libc = _libc()

    def enc(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None

    if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _open_traversal(locked: list[str], read_paths: list[str]) -> None:
    """In a private mount namespace, replace each locked directory by a 0711 tmpfs that
    holds only the entries leading to ``read_paths`` (bind mounts keeping their modes)."""
    libc = _libc()
    if libc.unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise WallError(f"cannot get a private mount namespace: {os.strerror(err)}")
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    for directory in locked:
        wanted = set()
        for path in read_paths:
            rel = os.path.relpath(os.path.abspath(path), directory)
            if not rel.startswith(os.pardir) and rel != os.curdir:
                wanted.add(rel.split(os.sep)[0])
        keep = os.open(directory, os.O_PATH | os.O_DIRECTORY)
        try:
            _mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0711,size=64k")
            for name in sorted(wanted):
                original = f"/proc/self/fd/{keep}/{name}"
                if not os.path.lexists(original):
                    continue
                target = os.path.join(directory, name)
                if os.path.isdir(original):
                    os.mkdir(target, 0o711)
                else:
                    os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o600))
                _mount(original, target, None, MS_BIND | MS_REC, None)
        finally:
            os.close(keep)


# --- Landlock ------------------------------------------------------------------------------


def _open_rules(read_paths: list[str], policy: dict[str, Any]) -> list[tuple[int, int, bool]]:
    """``(fd, allowed rights, is a directory)`` for every path of the policy that exists."""
    wanted: list[tuple[str, int]] = [(p, READ_RIGHTS) for p in read_paths]
    wanted += [(p, -1) for p in policy.get("write") or [] if isinstance(p, str)]
    wanted += [(".", -1)]  # the session directory (already the working directory)
    wanted += list(DEVICE_FILES.items())
    opened = []
    for path, rights in wanted:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        opened.append((fd, rights, stat.S_ISDIR(os.fstat(fd).st_mode)))
    return opened


def _landlock(abi: int, opened: list[tuple[int, int, bool]], ports: list[int]) -> str:
    """Create and enforce the ruleset; closes the descriptors; returns what it covers."""
    libc = _libc()
    fs = FS_ABI1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)
    fs |= FS_IOCTL_DEV if abi >= 5 else 0
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = _RulesetAttr(fs, net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        err = ctypes.get_errno()
        raise WallError(f"Landlock: cannot create a ruleset: {os.strerror(err)}")
    try:
        for fd, rights, is_dir in opened:
            allowed = fs if rights == -1 else rights
            allowed &= fs if is_dir else (fs & FILE_RIGHTS)
            rule = _PathBeneathAttr(allowed, fd)
            if libc.syscall(
                SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0
            ):
                err = ctypes.get_errno()
                raise WallError(f"Landlock: cannot add a path rule: {os.strerror(err)}")
        for port in ports if net else []:
            rule_net = _NetPortAttr(NET_BIND_TCP, int(port))
            if libc.syscall(
                SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_NET_PORT, ctypes.byref(rule_net), 0
            ):
                err = ctypes.get_errno()
                raise WallError(f"Landlock: cannot allow binding port {port}: {os.strerror(err)}")
        if libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
            err = ctypes.get_errno()
            raise WallError(f"Landlock: cannot enforce the ruleset: {os.strerror(err)}")
    finally:
        os.close(ruleset)
        for fd, _, _ in opened:
            os.close(fd)
    parts = [f"Landlock ABI {abi}: files read-only but the session directory"]
    parts.append(
        "TCP bind only on its ports, no TCP connect" if net else "no network rules (ABI < 4)"
    )
    parts.append(
        "signals and abstract sockets scoped" if scoped else "signals not scoped (ABI < 6)"
    )
    return "; ".join(parts)


# --- seccomp -------------------------------------------------------------------------------

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JSET_K = 0x45
BPF_RET_K = 0x06
AF_UNIX = 1
#: machine -> (AUDIT_ARCH_*, __NR_socket, syscall-number bits of a foreign ABI)
SECCOMP_ARCHES = {
    "x86_64": (0xC000003E, 41, 0x40000000),  # x32 numbers carry bit 30
    "aarch64": (0xC00000B7, 198, 0),
}


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def _seccomp() -> str:
    """Refuse ``socket(AF_UNIX, ...)`` and foreign-ABI system calls (after no-new-privs)."""
    arch = SECCOMP_ARCHES.get(os.uname().machine)
    if arch is None:
        return f"no seccomp filter (no rules for {os.uname().machine})"
    audit_arch, nr_socket, foreign_bits = arch
    deny = SECCOMP_RET_ERRNO | errno.EACCES
    # index: 0 arch, 1 check, 2 nr, 3 foreign, 4 socket?, 5 domain, 6 unix?, 7 allow, 8 deny
    program = [
        (BPF_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        (BPF_JEQ_K, 0, 6, audit_arch),  # another ABI: deny
        (BPF_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
        (BPF_JSET_K, 4, 0, foreign_bits),  # x32: deny
        (BPF_JEQ_K, 0, 2, nr_socket),
        (BPF_LD_W_ABS, 0, 0, 16),  # low half of args[0]: the domain
        (BPF_JEQ_K, 1, 0, AF_UNIX),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        (BPF_RET_K, 0, 0, deny),
    ]
    filters = (_SockFilter * len(program))(*(_SockFilter(*ins) for ins in program))
    prog = _SockFprog(len(program), filters)
    if _libc().prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise WallError(f"seccomp: cannot install the filter: {os.strerror(err)}")
    return "seccomp: no unix sockets"
