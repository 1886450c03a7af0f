"""Shared fixtures: real SQLite files and a real, throwaway PostgreSQL server."""

from __future__ import annotations

import itertools
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg import cluster, create_database, drop_database

_db_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    with cluster() as url:
        yield url


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    name = f"wd_test_{next(_db_counter)}"
    yield create_database(pg_server, name)
    drop_database(pg_server, name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'app.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on a real SQLite file and on a real PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'app.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(scope="session")
def watchdogctl() -> str:
    """The installed console script, next to the interpreter running the tests."""
    path = Path(sys.executable).parent / "watchdogctl"
    found = str(path) if path.exists() else shutil.which("watchdogctl")
    if not found:
        pytest.fail(
            "watchdogctl is not installed; run `make test` (pip install -e .[test])", pytrace=False
        )
    return found
