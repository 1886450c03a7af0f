"""Who may act: a PostgreSQL session-level advisory lock held on a dedicated connection,
or, on SQLite, an exclusive lock on a file next to the database (one daemon per file).

Both answer `acquire()` (try, never wait) and `held()` (still ours? asked before every
action, so a paused former leader can never act).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

import psycopg
from sqlalchemy.engine import make_url

from watchdog.core.errors import ConfigError, StoreUnavailable, describe
from watchdog.store.database import APPLICATION_NAME

LOCK_APPLICATION_NAME = APPLICATION_NAME + "-leader-lock"

_HELD = """SELECT EXISTS (
  SELECT 1 FROM pg_locks
  WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid() AND objsubid = 1
    AND ((classid::bigint << 32) | objid::bigint) = %s)"""


class PgAdvisoryLock:
    """`on_lost` is called when the lock's connection fails: the database was away (or
    our session was killed), which the engine's guards treat as an outage."""

    def __init__(
        self,
        url: str,
        key: int,
        timeout: float,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        parsed = make_url(url).set(drivername="postgresql")
        self._conninfo = parsed.render_as_string(hide_password=False)
        self._key = key
        self._timeout = timeout
        self._on_lost = on_lost
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None

    async def acquire(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                if self._conn is None or self._conn.closed:
                    self._conn = await psycopg.AsyncConnection.connect(
                        self._conninfo,
                        autocommit=True,
                        connect_timeout=max(1, int(self._timeout)),
                        application_name=LOCK_APPLICATION_NAME,
                    )
                cursor = await self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,))
                row = await cursor.fetchone()
                return bool(row and row[0])
        except (TimeoutError, psycopg.Error, OSError) as exc:
            await self.release()
            raise StoreUnavailable(f"leader lock unavailable: {describe(exc)}") from None

    async def held(self) -> bool:
        if self._conn is None or self._conn.closed:
            return False
        try:
            async with asyncio.timeout(self._timeout):
                cursor = await self._conn.execute(_HELD, (self._key,))
                row = await cursor.fetchone()
                return bool(row and row[0])
        except (TimeoutError, psycopg.Error, OSError) as exc:
            await self.release()  # a lost session has lost its lock
            if self._on_lost is not None:
                self._on_lost(describe(exc))
            return False

    async def release(self) -> None:
        """Close the session: the server releases the lock with it."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._timeout):
                    await conn.close()


class SqliteFileLock:
    """One daemon per SQLite database: an flock on `<database>.watchdog.lock`."""

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + ".watchdog.lock")
        self._file: IO[str] | None = None

    async def acquire(self) -> bool:
        if self._file is not None:
            return True
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            other = handle.read().strip() or "unknown"
            handle.close()
            raise ConfigError(
                f"another watchdog (pid {other}) already runs on this SQLite database; run one "
                "per database file, or use PostgreSQL to run several"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle
        return True

    async def held(self) -> bool:
        return self._file is not None

    async def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
