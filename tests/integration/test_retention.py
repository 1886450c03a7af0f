"""Retention on real databases (an SQLite file and PostgreSQL): old rows go, young ones,
open incidents and what the audit trail still needs stay, in batches, audited once.

Rows are written with explicit times around the database clock's now; no test waits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from watchdog.core.errors import StoreError
from watchdog.core.model import AuditAction, AuditRow, Outcome
from watchdog.core.ports import AuditQuery
from watchdog.store import migrate
from watchdog.store.database import Database
from watchdog.store.ledger import SqlLedger
from watchdog.store.retention import Keep, SqlRetention
from watchdog.store.schema import audit, incidents, outbox

DAYS = timedelta(days=1)
KEEP = Keep.days(90, 90, 7)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url, timeout=5.0)
    await migrate.upgrade(database)
    yield database
    await database.dispose()


@pytest.fixture
async def now(db: Database) -> datetime:
    async with db.connect("test") as conn:
        return await db.read_now(conn)


def retention(db: Database, keep: Keep = KEEP, batch: int = 1000) -> SqlRetention:
    return SqlRetention(db, SqlLedger(db), keep, batch=batch, pause=0.0)


# ----------------------------------------------------------------------------- rows


async def insert(db: Database, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    async with db.begin("test") as conn:
        await conn.execute(sa.insert(table), rows)


def audit_row(at: datetime, instance: str = "i-1", **extra: Any) -> dict[str, Any]:
    values = {
        "at": at,
        "instance_id": instance,
        "action": "detected",
        "outcome": "ok",
        "detail": "{}",
        "actor": "watchdog",
        "incident_id": None,
        "attempt": None,
    }
    return {**values, **extra}


def incident(
    instance: str, state: str, opened: datetime, closed: datetime | None
) -> dict[str, Any]:
    return {
        "instance_id": instance,
        "reason": "stale_heartbeat",
        "state": state,
        "attempt": 1,
        "opened_at": opened,
        "updated_at": closed or opened,
        "closed_at": closed,
        "flapping": False,
    }


def alert(state: str, created: datetime) -> dict[str, Any]:
    return {
        "created_at": created,
        "event": "audit:1",
        "sink": "ops",
        "payload": "{}",
        "state": state,
        "attempts": 0,
        "next_attempt_at": created,
    }


async def column(db: Database, col: sa.ColumnElement[Any]) -> list[Any]:
    async with db.connect("test") as conn:
        return list((await conn.execute(sa.select(col).order_by(col))).scalars())


async def retention_rows(db: Database) -> list[AuditRow]:
    query = AuditQuery(actions=[AuditAction.RETENTION], limit=100)
    return await SqlLedger(db).audit(query)


async def incident_id(db: Database, instance: str) -> int:
    async with db.connect("test") as conn:
        query = sa.select(incidents.c.id).where(incidents.c.instance_id == instance)
        return int((await conn.execute(query)).scalar_one())


# ----------------------------------------------------------------------------- audit


async def test_old_audit_rows_go_young_ones_stay(db: Database, now: datetime) -> None:
    await insert(
        db,
        audit,
        [
            audit_row(now - 200 * DAYS, "old-1"),
            audit_row(now - 91 * DAYS, "old-2"),
            audit_row(now - 89 * DAYS, "young-1"),
            audit_row(now - timedelta(minutes=1), "young-2"),
        ],
    )
    pruned = await retention(db).run()

    assert pruned.counts == {"audit": 2, "incidents": 0, "outbox": 0}
    kept = await column(db, audit.c.instance_id)
    assert sorted(kept) == ["*", "young-1", "young-2"]  # "*": the run's own audit row


async def test_an_intent_without_outcome_stays_until_it_has_one(
    db: Database, now: datetime
) -> None:
    old = now - 100 * DAYS

    def attempt(instance: str, outcome: str, at: datetime) -> dict[str, Any]:
        return audit_row(
            at, instance, incident_id=7, attempt=1, action="api_restart", outcome=outcome
        )

    await insert(db, audit, [attempt("waits", "started", old)])
    await insert(db, audit, [attempt("done", "started", old), attempt("done", "ok", old)])
    pruned = await retention(db).run()

    assert pruned.counts["audit"] == 2
    left = await SqlLedger(db).orphan_intents()
    assert [(r.instance_id, r.outcome) for r in left] == [("waits", Outcome.STARTED)]


# ------------------------------------------------------------------------ incidents


async def test_old_closed_incidents_go_open_ones_stay_whatever_their_age(
    db: Database, now: datetime
) -> None:
    ancient = now - 900 * DAYS
    await insert(
        db,
        incidents,
        [
            incident("recovered-old", "recovered", ancient, now - 91 * DAYS),
            incident("reset-old", "reset", ancient, now - 120 * DAYS),
            incident("dismissed-old", "dismissed", ancient, now - 400 * DAYS),
            incident("recovered-young", "recovered", ancient, now - 89 * DAYS),
            incident("open", "open", ancient, None),
            incident("exhausted", "exhausted", ancient, None),
            incident("suppressed", "suppressed", ancient, None),
            # Not closed, whatever a hand-made closed_at says.
            incident("open-with-closed-at", "open", ancient, ancient),
        ],
    )
    pruned = await retention(db).run()

    assert pruned.counts["incidents"] == 3
    assert await column(db, incidents.c.instance_id) == [
        "exhausted",
        "open",
        "open-with-closed-at",
        "recovered-young",
        "suppressed",
    ]


async def test_an_incident_named_by_a_kept_audit_row_stays(db: Database, now: datetime) -> None:
    closed = now - 30 * DAYS
    await insert(db, incidents, [incident("named", "recovered", closed, closed)])
    await insert(db, incidents, [incident("unnamed", "recovered", closed, closed)])
    named = await incident_id(db, "named")
    await insert(db, audit, [audit_row(closed, "named", incident_id=named)])

    first = await retention(db, Keep.days(90, 7, 7)).run()
    assert first.counts == {"audit": 0, "incidents": 1, "outbox": 0}
    assert await column(db, incidents.c.instance_id) == ["named"]

    # Once its audit rows go, the incident goes with them, in the same run.
    second = await retention(db, Keep.days(7, 7, 7)).run()
    assert second.counts == {"audit": 1, "incidents": 1, "outbox": 0}
    assert await column(db, incidents.c.instance_id) == []


async def test_incidents_are_kept_as_long_as_the_reopen_and_flapping_rules_read_them(
    db: Database, now: datetime
) -> None:
    closed = now - 3 * DAYS
    await insert(db, incidents, [incident("recent", "recovered", closed, closed)])
    floor = (5 * DAYS).total_seconds()  # e.g. a reopen_window of five days
    pruned = await retention(db, Keep.days(90, 1, 7, incidents_floor=floor)).run()
    assert pruned.counts["incidents"] == 0
    cutoff = pruned.cutoffs["incidents"]
    assert cutoff is not None
    assert now - 5 * DAYS <= cutoff < now - 4 * DAYS


# --------------------------------------------------------------------------- outbox


async def test_settled_alerts_go_pending_ones_stay(db: Database, now: datetime) -> None:
    old, young = now - 8 * DAYS, now - 6 * DAYS
    await insert(
        db,
        outbox,
        [
            alert("sent", old),
            alert("failed", old),
            alert("pending", old - 30 * DAYS),  # still being tried: never deleted
            alert("sent", young),
            alert("failed", young),
        ],
    )
    pruned = await retention(db).run()

    assert pruned.counts["outbox"] == 2
    async with db.connect("test") as conn:
        query = sa.select(outbox.c.state, outbox.c.created_at).order_by(outbox.c.id)
        left = [(r.state, r.created_at) for r in await conn.execute(query)]
    assert left == [("pending", old - 30 * DAYS), ("sent", young), ("failed", young)]


# -------------------------------------------------------------------------- batches


@pytest.fixture
def deletes(db: Database) -> Iterator[list[int]]:
    """The row count of every DELETE statement the database runs."""
    counts: list[int] = []

    def seen(_conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            counts.append(cursor.rowcount)

    sa.event.listen(db.engine.sync_engine, "after_cursor_execute", seen)
    yield counts
    sa.event.remove(db.engine.sync_engine, "after_cursor_execute", seen)


async def test_more_rows_than_one_batch_go_in_several_short_statements(
    db: Database, now: datetime, deletes: list[int]
) -> None:
    old = now - 100 * DAYS
    await insert(db, audit, [audit_row(old, f"a-{n}") for n in range(23)])
    await insert(db, incidents, [incident(f"i-{n}", "recovered", old, old) for n in range(12)])
    await insert(db, outbox, [alert("sent", old) for _ in range(10)])
    await insert(db, audit, [audit_row(now, "young")])

    pruned = await retention(db, batch=5).run()

    assert pruned.counts == {"audit": 23, "incidents": 12, "outbox": 10}
    assert max(deletes) <= 5
    # 23 = 5 x 4 + 3; 12 = 5 x 2 + 2; 10 = 5 x 2 + an empty one that ends it.
    assert len(deletes) == 5 + 3 + 3
    assert sorted(await column(db, audit.c.instance_id)) == ["*", "young"]


async def test_the_default_batch_deletes_a_backlog_larger_than_itself(
    db: Database, now: datetime, deletes: list[int]
) -> None:
    await insert(db, audit, [audit_row(now - 100 * DAYS, f"a-{n}") for n in range(2500)])
    pruned = await retention(db).run()
    assert pruned.counts["audit"] == 2500
    assert deletes == [1000, 1000, 500, 0, 0]  # then one empty look at incidents, outbox


async def test_a_stop_between_batches_ends_the_run_and_is_audited(
    db: Database, now: datetime
) -> None:
    old = now - 100 * DAYS
    await insert(db, audit, [audit_row(old, f"a-{n}") for n in range(12)])
    await insert(db, outbox, [alert("sent", old)])
    pruned = await retention(db, batch=5).run(proceed=lambda: False)

    assert (pruned.counts, pruned.complete) == ({"audit": 5, "incidents": 0, "outbox": 0}, False)
    [row] = await retention_rows(db)
    assert row.detail["complete"] is False


# ---------------------------------------------------------------------- the audit row


async def test_a_run_that_deleted_rows_is_audited_once_with_its_counts(
    db: Database, now: datetime
) -> None:
    old = now - 100 * DAYS
    await insert(db, audit, [audit_row(old, "a"), audit_row(old, "b")])
    await insert(db, incidents, [incident("closed", "recovered", old, old)])
    await insert(db, outbox, [alert("failed", old)])
    pruned = await retention(db).run()

    [row] = await retention_rows(db)
    assert (row.instance_id, row.outcome) == ("*", Outcome.OK)
    assert row.at >= now
    cutoffs = pruned.cutoffs
    assert row.detail == {
        "audit": 2,
        "incidents": 1,
        "outbox": 1,
        "complete": True,
        "cutoffs": {name: at.isoformat() for name, at in cutoffs.items() if at is not None},
    }
    assert cutoffs["audit"] is not None
    assert now - 90 * DAYS <= cutoffs["audit"] < row.at

    # The next run finds nothing to delete: the run's own row survives, nothing more is
    # audited.
    again = await retention(db).run()
    assert again.total == 0
    assert [r.id for r in await retention_rows(db)] == [row.id]


async def test_a_run_that_deleted_nothing_is_not_audited(db: Database, now: datetime) -> None:
    await insert(db, audit, [audit_row(now - 10 * DAYS)])
    await insert(db, outbox, [alert("sent", now - DAYS), alert("pending", now - 100 * DAYS)])
    pruned = await retention(db).run()
    assert pruned.total == 0
    assert await retention_rows(db) == []


async def test_zero_days_keeps_that_kind_forever(db: Database, now: datetime) -> None:
    ancient = now - 3000 * DAYS
    await insert(db, audit, [audit_row(ancient)])
    await insert(db, incidents, [incident("closed", "recovered", ancient, ancient)])
    await insert(db, outbox, [alert("sent", ancient)])
    pruned = await retention(db, Keep.days(0, 0, 1)).run()

    assert pruned.counts == {"audit": 0, "incidents": 0, "outbox": 1}
    assert pruned.cutoffs["audit"] is None
    assert pruned.cutoffs["incidents"] is None
    [row] = await retention_rows(db)
    assert row.detail["cutoffs"]["audit"] is None


async def test_a_failing_run_is_raised_and_audits_what_it_deleted(
    db: Database, now: datetime
) -> None:
    await insert(db, audit, [audit_row(now - 100 * DAYS)])
    async with db.begin("test") as conn:
        await conn.execute(sa.text("DROP TABLE watchdog_outbox"))

    with pytest.raises(StoreError, match="delete old outbox rows"):
        await retention(db).run()

    [row] = await retention_rows(db)
    assert row.outcome == Outcome.FAILED
    assert (row.detail["audit"], row.detail["complete"]) == (1, False)
    assert "delete old outbox rows" in row.detail["error"]
