"""Appending rows in one short statement, whatever their number, and the audit trail on
top of it: outcome rows held to one per intent, rows stamped with the database clock."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from watchdog.core.model import AuditAction, AuditRow, Outcome
from watchdog.core.ports import AuditQuery, NewAudit, interruption
from watchdog.store.database import Database, as_utc
from watchdog.store.records import AUDIT_COLUMNS, audit_row
from watchdog.store.schema import UtcDateTime, audit


async def insert_audits(
    db: Database, conn: AsyncConnection, at: datetime | None, specs: Sequence[NewAudit]
) -> list[AuditRow]:
    """Append rows in one statement; their ids follow the order of `specs`. `at` None:
    stamped with the database clock (on PostgreSQL inside the INSERT, no extra trip).

    Outcome rows (with an `intent_id`) whose intent has an outcome already are left
    out: the database holds each intent to one outcome, so writing outcomes again
    (after a lost commit acknowledgement) appends nothing twice. Returns the rows
    written."""
    if not specs:
        return []
    if at is None and db.is_sqlite:
        at = await db.read_now(conn)  # in-process: no round trip to save
    data = [
        (
            spec.incident_id,
            spec.instance_id,
            spec.reason,
            spec.attempt,
            str(spec.action),
            str(spec.outcome),
            json.dumps(dict(spec.detail), sort_keys=True, default=str),
            spec.duration,
            spec.actor,
            spec.intent_id,
        )
        for spec in specs
    ]
    outcomes = any(spec.intent_id is not None for spec in specs)
    unique = "intent_id" if outcomes else None
    written = await insert_rows(
        db, conn, audit, AUDIT_COLUMNS, data, stamped=True, at=at, unique=unique
    )
    kept = _inserted(specs, {intent_id for _id, _at, intent_id in written})
    return [
        AuditRow(
            new_id,
            as_utc(stamped),
            spec.instance_id,
            spec.action,
            spec.outcome,
            spec.incident_id,
            spec.reason,
            spec.attempt,
            dict(spec.detail),
            spec.duration,
            spec.actor,
            spec.intent_id,
        )
        for spec, (new_id, stamped, _intent) in zip(kept, written, strict=True)
    ]


async def insert_rows(
    db: Database,
    conn: AsyncConnection,
    table: sa.Table,
    columns: Sequence[str],
    data: Sequence[Sequence[Any]],
    *,
    stamped: bool = False,
    at: datetime | None = None,
    unique: str | None = None,
) -> list[tuple[int, Any, Any]]:
    """Insert rows in one short statement: (new id, `at`, `unique`) of each, in the
    order of `data`. `stamped`: the column `at` of every row is filled, with `at` or,
    when it is None, the database clock. `unique`: a column with a unique index; a row
    that would repeat a value already there is skipped (and missing from the result).

    Rows go in in `n` order, so the ids (from one sequence, ascending) sort into it."""
    clock = stamped and at is None

    def build() -> sa.Insert:
        rows = db.rows("batch", {c: table.c[c].type for c in columns})
        fields: list[sa.ColumnElement[Any]] = [rows.c[c] for c in columns]
        names = list(columns)
        if stamped:
            fields.append(sa.func.now() if clock else sa.bindparam("stamp", type_=UtcDateTime()))
            names.append("at")
        # WHERE true: SQLite would otherwise read ON CONFLICT as a join's ON.
        select = sa.select(*fields).where(sa.true()).order_by(rows.c.n)
        stamp = table.c.at if stamped else sa.null()
        key = table.c[unique] if unique is not None else sa.null()
        insert = db.insert_skipping(table, unique).from_select(names, select)
        return insert.returning(table.c.id, stamp, key)

    insert = db.memo(("insert_rows", table.name, tuple(columns), stamped, clock, unique), build)
    params: dict[str, Any] = db.batch("batch", data)
    if stamped and not clock:
        params["stamp"] = at
    returned = await conn.execute(insert, params)
    return sorted((row[0], row[1], row[2]) for row in returned)


def _inserted(specs: Sequence[NewAudit], intents: Collection[Any]) -> list[NewAudit]:
    """The specs an insert kept, in order: all but outcomes of an intent it skipped (and
    of an intent given twice, all but the first)."""
    kept: list[NewAudit] = []
    taken: set[int] = set()
    for spec in specs:
        if spec.intent_id is None:
            kept.append(spec)
        elif spec.intent_id in intents and spec.intent_id not in taken:
            taken.add(spec.intent_id)
            kept.append(spec)
    return kept


AuditSink = Callable[[AuditRow], None]


def ignore_audit(_row: AuditRow) -> None:
    return None


class AuditTrail:
    """The append-only audit trail: appending (each committed row handed to the log sink),
    reading, and the intents still without an outcome. `SqlLedger` is one, sharing its
    database and sink."""

    _db: Database
    _emit: AuditSink

    def emit(self, row: AuditRow) -> None:
        """Hand a committed audit row to the log sink."""
        self._emit(row)

    async def insert_audit(self, conn: AsyncConnection, at: datetime, spec: NewAudit) -> AuditRow:
        return (await self.insert_audits(conn, at, [spec]))[0]

    async def insert_audits(
        self, conn: AsyncConnection, at: datetime | None, specs: Sequence[NewAudit]
    ) -> list[AuditRow]:
        """See `insert_audits`."""
        return await insert_audits(self._db, conn, at, specs)

    async def append(self, row: NewAudit) -> AuditRow:
        return (await self.append_all([row]))[0]

    async def append_all(self, rows: Sequence[NewAudit]) -> list[AuditRow]:
        if not rows:
            return []
        async with self._db.begin("append audit") as conn:
            written = await self.insert_audits(conn, None, rows)
        for row in written:
            self._emit(row)
        return written

    async def audit(self, query: AuditQuery) -> list[AuditRow]:
        """Matching rows, the most recent `limit` of them, oldest first."""
        select = sa.select(audit).order_by(audit.c.id.desc()).limit(query.limit)
        if query.instance_id is not None:
            select = select.where(audit.c.instance_id == query.instance_id)
        if query.since is not None:
            select = select.where(audit.c.at >= query.since)
        if query.actions:
            select = select.where(audit.c.action.in_([str(a) for a in query.actions]))
        async with self._db.connect("read audit") as conn:
            rows = (await conn.execute(select)).all()
        return [audit_row(row) for row in reversed(rows)]

    async def outcome_times(
        self, since: datetime, actions: Collection[AuditAction]
    ) -> list[tuple[datetime, str, str]]:
        """(at, action, outcome) of each outcome row of `actions` since `since`: what a
        timeline counts, without reading or decoding any detail."""
        query = sa.select(audit.c.at, audit.c.action, audit.c.outcome).where(
            audit.c.at >= since,
            audit.c.action.in_([str(a) for a in actions]),
            audit.c.outcome != str(Outcome.STARTED),
        )
        async with self._db.connect("read action outcomes") as conn:
            return [
                (as_utc(at), action, outcome) for at, action, outcome in await conn.execute(query)
            ]

    async def orphan_intents(
        self, among: Collection[int] | None = None, instances: Collection[str] | None = None
    ) -> list[AuditRow]:
        """Intent rows without an outcome: no later row of the same incident, attempt and
        action (rows from before outcomes named their intent count too). Of all, or of
        the intent ids `among`, or of the instances `instances` (read by their index)."""
        later = audit.alias("later")
        query = sa.select(audit).where(
            audit.c.outcome == str(Outcome.STARTED),
            ~sa.exists().where(
                later.c.incident_id == audit.c.incident_id,
                later.c.attempt == audit.c.attempt,
                later.c.action == audit.c.action,
                later.c.id > audit.c.id,
            ),
        )
        if among is not None:
            if not among:
                return []
            query = query.where(audit.c.id.in_(sorted(among)))  # a few: the ones still waiting
        if instances is not None:
            if not instances:
                return []
            query = query.where(self._db.among(audit.c.instance_id, instances))
        async with self._db.connect("find intents without outcome") as conn:
            rows = (await conn.execute(query.order_by(audit.c.id))).all()
        return [audit_row(row) for row in rows]

    async def interrupt(self, intents: Sequence[AuditRow], note: str) -> list[AuditRow]:
        """An `interrupted` outcome for each intent that still has none."""
        specs = [interruption(row, note) for row in intents]
        if not specs:
            return []
        async with self._db.begin("record interrupted actions") as conn:
            written = await self.insert_audits(conn, None, specs)
        for row in written:
            self._emit(row)
        return written
