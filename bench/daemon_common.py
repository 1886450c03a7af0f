"""Helpers for the scenarios that run the real daemon against PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import psycopg

from bench import fleet
from bench.common import Env, wait_until
from watchdog.store.database import Database


def prepare(env: Env, name: str, n: int, **profile: int) -> tuple[str, str]:
    """A fresh database with `n` instances; returns (SQLAlchemy URL, psycopg conninfo)."""
    url = env.cluster.create_database(name)

    async def build() -> None:
        db = Database(url, 30.0)
        try:
            await fleet.build(db, n, **profile)
        finally:
            await db.dispose()

    asyncio.run(build())
    return url, env.cluster.conninfo(name)


def query(conninfo: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def wait_ready(conninfo: str, proc: Any, timeout: float = 60.0) -> bool:
    """Until the daemon recorded a good cycle (or died)."""

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {proc.returncode} before its first cycle")
        rows = query(
            conninfo, "SELECT count(*) FROM watchdog_nodes WHERE last_good_cycle_at IS NOT NULL"
        )
        return bool(rows[0][0])

    return wait_until(ready, timeout, 0.2)


def first_rows(conninfo: str, action: str, outcome: str | None = None) -> dict[str, datetime]:
    """The first audit `at` per instance for one action (and outcome)."""
    sql = "SELECT instance_id, min(at) FROM watchdog_audit WHERE action = %s"
    params: list[Any] = [action]
    if outcome is not None:
        sql += " AND outcome = %s"
        params.append(outcome)
    return {r[0]: r[1] for r in query(conninfo, sql + " GROUP BY instance_id", params)}


def heartbeats(conninfo: str, ids: list[str]) -> dict[str, datetime]:
    rows = query(conninfo, "SELECT id, last_heartbeat_at FROM instances WHERE id = ANY(%s)", (ids,))
    return {r[0]: r[1] for r in rows}


def config(url: str, sections: str, api: str = "") -> str:
    """A daemon config: the database, no API token, `api` lines, then `sections`."""
    return f'[database]\nurl = "{url}"\n\n[api]\ntoken_env = ""\n{api}\n{sections}'
