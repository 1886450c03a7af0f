"""A throwaway PostgreSQL cluster for the test session.

PostgreSQL refuses to run as root, so as root the cluster is created and run as the
`postgres` user, in a directory under /tmp (pytest's tmp_path is private to root).
`WATCHDOG_TEST_DATABASE_URL` (a server URL the tests may create databases on) skips
all of this.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found: install them "
    "(Debian: apt-get install postgresql) or set WATCHDOG_TEST_DATABASE_URL"
)


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


@contextmanager
def cluster() -> Iterator[str]:
    """Yield a server URL (postgresql+psycopg://postgres@127.0.0.1:PORT) for the session."""
    if os.environ.get("WATCHDOG_TEST_DATABASE_URL"):
        yield os.environ["WATCHDOG_TEST_DATABASE_URL"]
        return
    bindir = _bindir()
    owner = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="watchdog-pg-", dir="/tmp"))
    data, port = root / "data", _free_port()
    if owner:
        shutil.chown(root, owner, owner)
    _run_as(
        owner,
        str(bindir / "initdb"),
        "-D",
        str(data),
        "-U",
        "postgres",
        "--auth=trust",
        "-E",
        "UTF8",
        "--no-sync",
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    _run_as(
        owner,
        str(bindir / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-l",
        str(root / "log"),
        "-w",
        "start",
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        _run_as(owner, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)
