"""A private PostgreSQL server for tests (Debian's ``postgresql`` package).

Started once per test run as the ``postgres`` user (``initdb`` refuses root) with its
own data directory, Unix socket directory and port on 127.0.0.1, trust
authentication, and stopped at the end. :func:`find_bindir` says whether the server
is installed; tests that need it skip (or, in CI, fail) when it is not.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from .waiting import wait_for


def find_bindir() -> Path | None:
    """Where ``initdb``/``postgres`` live, newest version first; None if not installed."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        # its own directory: the postgres user cannot enter pytest's private temp root
        self.base = Path(tempfile.mkdtemp(prefix="phoebe-spawner-pg-"))
        self.data = self.base / "data"
        self.sockets = self.base / "sockets"
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.run_as = "postgres" if os.geteuid() == 0 else None

    def _cmd(self, *argv: str) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *argv] if self.run_as else list(argv)

    def start(self, timeout: float = 60) -> str:
        self.sockets.mkdir(exist_ok=True)
        if self.run_as:
            pw = pwd.getpwnam(self.run_as)
            for path in (self.base, self.sockets):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        subprocess.run(
            self._cmd(
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "--auth=trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        self.proc = subprocess.Popen(
            self._cmd(
                str(self.bindir / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.sockets),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        proc = self.proc

        def listening() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"postgres exited with status {proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_for(listening, "postgres to listen", timeout=timeout, interval=0.1)
        wait_for(self._accepts, "postgres to accept connections", timeout=timeout, interval=0.1)
        return self.url("postgres")

    def _accepts(self) -> bool:
        """Whether the server accepts a connection (it listens before it is ready)."""
        import psycopg

        try:
            with psycopg.connect(self.url("postgres", driver=False), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def url(self, database: str, *, driver: bool = True) -> str:
        scheme = "postgresql+psycopg" if driver else "postgresql"
        return f"{scheme}://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url("postgres", driver=False), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()  # SIGTERM: smart shutdown; runuser forwards it
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        subprocess.run(["pkill", "-f", f"-D {self.data}"], check=False)
        self.proc = None
        shutil.rmtree(self.base, ignore_errors=True)
