"""A throwaway PostgreSQL cluster for the test session.

PostgreSQL refuses to run as root, so as root the cluster is created and run as the
`postgres` user, in a directory under /tmp (pytest's tmp_path is private to root).
`WATCHDOG_TEST_DATABASE_URL` (a server URL the tests may create databases on) skips
all of this. A test that stops or suspends a server uses a `Cluster` of its own.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found: install them "
    "(Debian: apt-get install postgresql) or set WATCHDOG_TEST_DATABASE_URL"
)
_HALTED = frozenset({psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD})


def _bindir() -> Path:
    for name in ("initdb", "pg_ctl"):
        found = shutil.which(name)
        if found:
            return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if candidates:
        return Path(candidates[-1]).parent
    pytest.fail(INSTALL_HINT, pytrace=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as(owner: str | None, *argv: str) -> None:
    kwargs: dict[str, object] = {"user": owner, "group": owner, "cwd": "/"} if owner else {}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        pytest.fail(f"{argv[0]} failed: {result.stderr.strip()[-500:]}", pytrace=False)


class Cluster:
    """A throwaway PostgreSQL server: `start()`, `stop()`, `suspend()`, `resume()`, `close()`.

    `url` is `postgresql+psycopg://postgres@127.0.0.1:PORT/postgres`; the port stays the
    same across stop and start. `suspend()` SIGSTOPs the postmaster and every process it
    started, so the server keeps its TCP connections and accepts new ones into the listen
    backlog but answers nothing: a hung server, as seen from a client. `close()` resumes,
    stops (immediate mode) and removes everything; the context manager calls it.
    """

    def __init__(self) -> None:
        self.bindir = _bindir()
        self.owner = "postgres" if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="watchdog-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._suspended: list[psutil.Process] = []
        if self.owner:
            shutil.chown(self.root, self.owner, self.owner)

    @property
    def running(self) -> bool:
        return self.postmaster_pid() is not None

    def postmaster_pid(self) -> int | None:
        """The postmaster's pid from `data/postmaster.pid`, when the server is running."""
        try:
            first = (self.data / "postmaster.pid").read_text().split("\n", 1)[0]
        except FileNotFoundError:
            return None
        return int(first) if first.strip().isdigit() else None

    def start(self) -> Cluster:
        """Create the cluster on first use, then start the server and wait until it is up."""
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        if not self.running:
            options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
            self._pg_ctl("-o", options, "-l", str(self.root / "log"), "-w", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (resuming it first when suspended); idempotent."""
        self.resume()
        if self.running:
            self._pg_ctl("-m", mode, "-w", "stop")

    def suspend(self) -> list[int]:
        """SIGSTOP the postmaster, then all its descendants, and wait until every one of
        them has really stopped (signal delivery is asynchronous); returns their pids."""
        pid = self.postmaster_pid()
        if pid is None:
            raise AssertionError("the PostgreSQL server is not running")
        postmaster = psutil.Process(pid)
        postmaster.suspend()  # first, so that it starts nothing new meanwhile
        self._suspended.append(postmaster)
        _wait_stopped([postmaster])
        children = postmaster.children(recursive=True)
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.suspend()
                self._suspended.append(child)
        _wait_stopped(children)
        return [p.pid for p in self._suspended]

    def resume(self) -> None:
        """SIGCONT whatever `suspend()` stopped; idempotent."""
        suspended, self._suspended = self._suspended, []
        for proc in reversed(suspended):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.resume()  # psutil checks the pid still names the same process

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _initdb(self) -> None:
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

    def _pg_ctl(self, *args: str) -> None:
        _run_as(self.owner, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args)


def _wait_stopped(procs: list[psutil.Process], timeout: float = 5.0) -> None:
    """Wait until each process is stopped, a zombie or gone."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        while True:
            try:
                if proc.status() in _HALTED:
                    break
            except psutil.NoSuchProcess:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"process {proc.pid} did not stop after SIGSTOP")
            time.sleep(0.005)


def create_database(server_url: str, name: str) -> str:
    """A new, empty database `name` on the server; returns its URL."""
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return sa.engine.make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: str, name: str) -> None:
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


@contextmanager
def cluster() -> Iterator[str]:
    """Yield a server URL (postgresql+psycopg://postgres@127.0.0.1:PORT) for the session."""
    if os.environ.get("WATCHDOG_TEST_DATABASE_URL"):
        yield os.environ["WATCHDOG_TEST_DATABASE_URL"]
        return
    with Cluster() as server:
        yield server.url
