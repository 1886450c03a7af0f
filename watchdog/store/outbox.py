"""The alert outbox in SQL: feeding it from the audit trail, claiming and marking rows.

Feeding: the audit rows past the cursor (the flag "alert_cursor", {"audit_id": N}) become
outbox rows, one per sink, and the cursor moves IN THE SAME TRANSACTION by a conditional
UPDATE on its old value, so two feeders enqueue every audit row exactly once.

Sending: a sender claims each sink's oldest pending rows, in id order, by conditional
UPDATEs (pending, due, unclaimed or lease expired) whose row counts say whether it won;
it then marks each row sent or failed only while its claim still stands. A claim whose
owner died lapses with its lease.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from watchdog.core.errors import StoreError
from watchdog.core.model import AuditRow
from watchdog.store.database import Database
from watchdog.store.records import audit_row
from watchdog.store.schema import audit, flags, outbox

CURSOR = "alert_cursor"
PENDING, SENT, FAILED = "pending", "sent", "failed"


@dataclass(frozen=True, slots=True)
class NewAlert:
    """One outbox row to insert: what happened, for which sink, the body to post."""

    event: str
    sink: str
    payload: str


@dataclass(frozen=True, slots=True)
class Claimed:
    """An outbox row this node has claimed and now delivers."""

    id: int
    event: str
    sink: str
    payload: str
    attempts: int  # failed attempts before this one


@dataclass(frozen=True, slots=True)
class FeedResult:
    cursor: int | None  # the audit id the cursor stands on afterwards (None: unknown)
    audit_rows: int = 0  # alert-worthy audit rows enqueued
    enqueued: int = 0  # outbox rows inserted
    lost: bool = False  # another feeder moved the cursor first; nothing was written


class _CursorMoved(Exception):
    """Raised inside the feed transaction to roll it back."""


Enqueue = Callable[[AuditRow], Sequence[NewAlert]]


class SqlOutbox:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def db_now(self) -> datetime:
        async with self._db.connect("read database clock") as conn:
            return await self._db.read_now(conn)

    # -------------------------------------------------------------------- feeding

    async def max_audit_id(self) -> int:
        """The highest committed audit id (0 for an empty trail)."""
        async with self._db.connect("read last audit id") as conn:
            return await _max_audit_id(conn)

    async def cursor(self) -> int | None:
        async with self._db.connect("read alert cursor") as conn:
            raw = await _read_cursor(conn)
        return None if raw is None else _parse_cursor(raw)

    async def start_cursor(self, now: datetime) -> int:
        """Put the cursor on the newest audit row unless it exists: history is not alerted.

        Idempotent and race-free: the insert does nothing when another feeder won."""
        async with self._db.begin("start alert cursor") as conn:
            last = await _max_audit_id(conn)
            insert = sqlite.insert if self._db.is_sqlite else postgresql.insert
            values = {"name": CURSOR, "value": _cursor_value(last), "updated_at": now}
            await conn.execute(insert(flags).values(values).on_conflict_do_nothing())
            raw = await _read_cursor(conn)
        return _parse_cursor(raw or _cursor_value(last))

    async def feed(
        self,
        now: datetime,
        horizon: int,
        enqueue: Enqueue,
        actions: Collection[str],
        batch: int = 500,
    ) -> FeedResult:
        """Enqueue the alerts of audit rows (cursor, horizon] whose action is in `actions`.

        `enqueue` turns one audit row into its outbox rows (none: not alert-worthy). At
        most `batch` audit rows are read; the cursor then stops at the last one read."""
        try:
            async with self._db.begin("enqueue alerts") as conn:
                return await self._feed(conn, now, horizon, enqueue, actions, batch)
        except _CursorMoved:
            return FeedResult(cursor=None, lost=True)

    async def _feed(
        self,
        conn: AsyncConnection,
        now: datetime,
        horizon: int,
        enqueue: Enqueue,
        actions: Collection[str],
        batch: int,
    ) -> FeedResult:
        raw = await _read_cursor(conn)
        if raw is None:
            raise StoreError("the alert cursor is missing; call start_cursor() first")
        cursor = _parse_cursor(raw)
        if horizon <= cursor:
            return FeedResult(cursor)
        query = (
            sa.select(audit)
            .where(audit.c.id > cursor, audit.c.id <= horizon, audit.c.action.in_(list(actions)))
            .order_by(audit.c.id)
            .limit(batch)
        )
        rows = [audit_row(r) for r in (await conn.execute(query)).all()]
        new_cursor = rows[-1].id if len(rows) >= batch else horizon
        move = (
            sa.update(flags)
            .where(flags.c.name == CURSOR, flags.c.value == raw)
            .values(value=_cursor_value(new_cursor), updated_at=now)
        )
        if (await conn.execute(move)).rowcount != 1:
            raise _CursorMoved  # another feeder took these rows: write nothing
        alerts = [(row, alert) for row in rows for alert in enqueue(row)]
        if alerts:
            await conn.execute(sa.insert(outbox), [_pending(a, now) for _, a in alerts])
        return FeedResult(new_cursor, len({row.id for row, _ in alerts}), len(alerts))

    # -------------------------------------------------------------------- sending

    async def claim(
        self, sinks: Sequence[str], node: str, now: datetime, until: datetime, per_sink: int
    ) -> list[Claimed]:
        """Claim for `node`, until `until`, the oldest pending rows of each sink, in order.

        Each sink's rows go out in id order: claiming stops at the first row that is not
        due (backing off) or is claimed by a live node. Every row is claimed by its own
        conditional UPDATE, which re-checks that it is still due and unclaimed, so of two
        nodes racing for a row exactly one gets it; the loser stops for that sink."""
        async with self._db.begin("claim alerts") as conn:
            claimed: list[Claimed] = []
            for sink in sorted(set(sinks)):  # one lock order for every node: no deadlock
                claimed += await self._claim_sink(conn, sink, node, now, until, per_sink)
        return claimed

    async def _claim_sink(
        self,
        conn: AsyncConnection,
        sink: str,
        node: str,
        now: datetime,
        until: datetime,
        per_sink: int,
    ) -> list[Claimed]:
        query = (
            sa.select(outbox)
            .where(outbox.c.state == PENDING, outbox.c.sink == sink)
            .order_by(outbox.c.id)
            .limit(per_sink)
        )
        claimed: list[Claimed] = []
        for row in (await conn.execute(query)).all():
            if not _due(row.next_attempt_at, row.claimed_until, now):
                break
            claim = (
                sa.update(outbox)
                .where(outbox.c.id == row.id, _due_sql(now))
                .values(claimed_by=node, claimed_until=until)
            )
            if (await conn.execute(claim)).rowcount != 1:
                break  # another node got there first: the rest of this sink is its
            claimed.append(Claimed(row.id, row.event, row.sink, row.payload, row.attempts))
        return claimed

    async def release(self, rows: Sequence[Claimed], node: str) -> None:
        """Give back claimed rows that were not tried; no attempt is counted."""
        if not rows:
            return
        update = (
            sa.update(outbox)
            .where(
                outbox.c.id.in_([r.id for r in rows]),
                outbox.c.state == PENDING,
                outbox.c.claimed_by == node,
            )
            .values(claimed_by=None, claimed_until=None)
        )
        async with self._db.begin("release alerts") as conn:
            await conn.execute(update)

    async def mark_sent(self, row: Claimed, node: str, now: datetime) -> bool:
        """Record a delivery; False if the claim had lapsed and another node took the row."""
        values = {"state": SENT, "sent_at": now, "claimed_until": None, "last_error": None}
        return await self._settle(row, node, values, "mark alert sent")

    async def mark_failed(
        self, row: Claimed, node: str, error: str, retry_at: datetime, give_up: bool
    ) -> bool:
        """Count a failed attempt: due again at `retry_at`, or `failed` for good."""
        values = {
            "state": FAILED if give_up else PENDING,
            "attempts": row.attempts + 1,
            "next_attempt_at": retry_at,
            "claimed_until": None,
            "last_error": error,
        }
        return await self._settle(row, node, values, "mark alert failed")

    async def _settle(self, row: Claimed, node: str, values: dict[str, Any], what: str) -> bool:
        update = (
            sa.update(outbox)
            .where(outbox.c.id == row.id, outbox.c.state == PENDING, outbox.c.claimed_by == node)
            .values(values)
        )
        async with self._db.begin(what) as conn:
            return bool((await conn.execute(update)).rowcount == 1)

    # -------------------------------------------------------------------- reading

    async def pending_count(self) -> int:
        query = sa.select(sa.func.count()).select_from(outbox).where(outbox.c.state == PENDING)
        async with self._db.connect("count pending alerts") as conn:
            return int((await conn.execute(query)).scalar_one())

    async def rows(self) -> list[dict[str, Any]]:
        """Every outbox row as a dict, oldest first (for status commands and tests)."""
        async with self._db.connect("read outbox") as conn:
            result = await conn.execute(sa.select(outbox).order_by(outbox.c.id))
            return [dict(row._mapping) for row in result]


# ------------------------------------------------------------------------------ helpers


async def _max_audit_id(conn: AsyncConnection) -> int:
    return int((await conn.execute(sa.select(sa.func.max(audit.c.id)))).scalar_one() or 0)


async def _read_cursor(conn: AsyncConnection) -> str | None:
    query = sa.select(flags.c.value).where(flags.c.name == CURSOR)
    value = (await conn.execute(query)).scalar_one_or_none()
    return None if value is None else str(value)


def _due(next_attempt_at: datetime, claimed_until: datetime | None, now: datetime) -> bool:
    return next_attempt_at <= now and (claimed_until is None or claimed_until <= now)


def _due_sql(now: datetime) -> sa.ColumnElement[bool]:
    return sa.and_(
        outbox.c.state == PENDING,
        outbox.c.next_attempt_at <= now,
        sa.or_(outbox.c.claimed_until.is_(None), outbox.c.claimed_until <= now),
    )


def _cursor_value(audit_id: int) -> str:
    return json.dumps({"audit_id": audit_id})


def _parse_cursor(raw: str) -> int:
    try:
        value = json.loads(raw)["audit_id"]
    except (ValueError, TypeError, KeyError):
        value = None
    if not isinstance(value, int) or isinstance(value, bool):
        raise StoreError(
            f'the alert cursor (flag "{CURSOR}") is not {{"audit_id": N}}: {raw[:80]!r}; '
            "delete that flag row to restart alerting from the newest audit row"
        )
    return value


def _pending(alert: NewAlert, now: datetime) -> dict[str, Any]:
    return {
        "created_at": now,
        "event": alert.event,
        "sink": alert.sink,
        "payload": alert.payload,
        "state": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
    }
