"""A throwaway PostgreSQL cluster the test owns: ``initdb`` in a temp dir, ``pg_ctl`` to
start, stop and restart it. The machine's shared server is never restarted.

initdb refuses to run as root, so as root the cluster is made and run by the ``postgres``
user (``runuser``); tests that need it skip with that reason otherwise.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

BIN = Path(os.environ.get("NUVOM_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def unavailable_reason() -> str | None:
    """Why a throwaway cluster cannot be made here, or ``None``."""
    if not (BIN / "initdb").exists():
        return f"no initdb under {BIN} (set NUVOM_TEST_PG_BIN)"
    if os.geteuid() != 0:
        return "a throwaway cluster is run as the postgres user, which needs root (runuser)"
    if shutil.which("runuser") is None:
        return "runuser is missing"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Cluster:
    """One cluster on ``host:port``; ``dsn`` connects as ``postgres`` (trust on local
    sockets and 127.0.0.1 unless ``password`` sets scram for TCP)."""

    def __init__(self, host: str = "127.0.0.1", password: str | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="nuvom-pg-"))
        os.chmod(self.root, 0o755)
        self.data = self.root / "data"
        self.host, self.port = host, free_port(host if host != "0.0.0.0" else "127.0.0.1")
        self.password = password
        shutil.chown(self.root, "postgres", "postgres")
        self._as_postgres([str(BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                           "--auth=trust", "-E", "UTF8", "--no-sync"])
        conf = self.data / "postgresql.conf"
        with open(conf, "a") as fh:
            fh.write(f"\nlisten_addresses = '{host}'\nport = {self.port}\n"
                     f"unix_socket_directories = '{self.root}'\nfsync = on\n"
                     "max_connections = 100\n")
        if password is not None:
            hba = self.data / "pg_hba.conf"
            hba.write_text("local all all trust\nhost all all 0.0.0.0/0 scram-sha-256\n")
        self.start()
        if password is not None:
            with psycopg.connect(host=str(self.root), port=self.port, user="postgres",
                                 dbname="postgres", autocommit=True) as conn:
                conn.execute(f"ALTER USER postgres PASSWORD '{password}'")

    @property
    def dsn(self) -> str:
        auth = f" password={self.password}" if self.password else ""
        return f"host={self.host} port={self.port} user=postgres dbname=postgres{auth}"

    def _as_postgres(self, cmd: list[str]) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True,
                       capture_output=True, timeout=120)

    def _ctl(self, *args: str) -> None:
        self._as_postgres([str(BIN / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60",
                           "-l", str(self.root / "log"), *args])

    def start(self) -> None:
        self._ctl("start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("stop", "-m", mode)

    def restart(self, mode: str = "fast") -> None:
        self._ctl("restart", "-m", mode)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
