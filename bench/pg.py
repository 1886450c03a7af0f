"""A throwaway PostgreSQL cluster under /tmp (run as the `postgres` user when we are root).

A trimmed copy of the test suite's cluster: the bench must not import `tests/`.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found: install them "
    "(Debian: apt-get install postgresql)"
)


def _bindir() -> Path:
    for name in ("initdb", "pg_ctl"):
        found = shutil.which(name)
        if found:
            return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if candidates:
        return Path(candidates[-1]).parent
    raise RuntimeError(INSTALL_HINT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as(owner: str | None, *argv: str) -> None:
    kwargs: dict[str, object] = {"user": owner, "group": owner, "cwd": "/"} if owner else {}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {result.stderr.strip()[-500:]}")


class Cluster:
    """`start()` creates and starts the server; `close()` stops it and removes its files."""

    def __init__(self) -> None:
        self.bindir = _bindir()
        self.owner = "postgres" if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="watchdog-bench-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.port = _free_port()
        if self.owner:
            shutil.chown(self.root, self.owner, self.owner)

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of one database on this server."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        """The same, for psycopg directly."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> Cluster:
        _run_as(
            self.owner,
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg_ctl("-o", options, "-l", str(self.root / "log"), "-w", "start")
        return self

    def create_database(self, name: str) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def close(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._pg_ctl("-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _pg_ctl(self, *args: str) -> None:
        _run_as(self.owner, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args)
