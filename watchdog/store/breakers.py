"""The circuit breakers' persistent state: one row of `watchdog_breakers` per backend.

Breakers live in memory (`watchdog.core.breaker`); this table lets their state and statistics
survive a restart and shows them to operators. Saving replaces the rows of the given
breakers (delete, then insert) in one transaction, which is portable across SQLite and
PostgreSQL. Every call is bounded by the database timeout (`Database.guard`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from watchdog.core.breaker import BreakerSnapshot, BreakerState
from watchdog.core.errors import StoreError
from watchdog.store.database import Database
from watchdog.store.schema import breakers


class SqlBreakerStore:
    """Reads and writes breaker snapshots."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def load(self) -> list[BreakerSnapshot]:
        """Every stored breaker, by name."""
        query = sa.select(breakers).order_by(breakers.c.name)
        async with self._db.connect("load breakers") as conn:
            rows = (await conn.execute(query)).all()
        return [_snapshot(row) for row in rows]

    async def save(self, snapshots: Sequence[BreakerSnapshot], now: datetime) -> None:
        """Insert or overwrite the rows of `snapshots`, stamped `updated_at = now`."""
        if not snapshots:
            return
        names = [s.name for s in snapshots]
        if len(set(names)) != len(names):
            raise ValueError("two snapshots of the same breaker given to save")
        rows = [_row(s, now) for s in snapshots]
        async with self._db.begin("save breakers") as conn:
            await conn.execute(sa.delete(breakers).where(breakers.c.name.in_(names)))
            await conn.execute(sa.insert(breakers), rows)


def _row(snapshot: BreakerSnapshot, now: datetime) -> dict[str, Any]:
    return {
        "name": snapshot.name,
        "state": str(snapshot.state),
        "failures": snapshot.failures,
        "successes": snapshot.successes,
        "total": snapshot.total,
        "total_failures": snapshot.total_failures,
        "failure_rate": snapshot.failure_rate,
        "opened_at": snapshot.opened_at,
        "last_failure_at": snapshot.last_failure_at,
        "last_success_at": snapshot.last_success_at,
        "next_attempt_at": snapshot.next_attempt_at,
        "last_error": snapshot.last_error,
        "updated_at": now,
    }


def _snapshot(row: sa.Row[Any]) -> BreakerSnapshot:
    try:
        state = BreakerState(row.state)
    except ValueError:
        raise StoreError(
            f"breaker {row.name!r} has an unknown state {row.state!r} in watchdog_breakers; "
            "delete the row to reset that breaker"
        ) from None
    return BreakerSnapshot(
        name=row.name,
        state=state,
        failures=row.failures,
        successes=row.successes,
        total=row.total,
        total_failures=row.total_failures,
        failure_rate=row.failure_rate,
        opened_at=row.opened_at,
        last_failure_at=row.last_failure_at,
        last_success_at=row.last_success_at,
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
    )
