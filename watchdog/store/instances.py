"""The application's table, mapped from `[instances]`: one detection query per cycle.

The query's WHERE clause mirrors `policy.classify` (a test checks that they agree);
the reason is then decided by `classify` itself on the ages the database computed, so
the rule lives in one place. Ages are measured on the database clock.

The only write is the force-reconnect flag.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from watchdog.config import InstancesSettings
from watchdog.errors import StoreTimeout
from watchdog.model import Finding, Scan
from watchdog.policy import DetectionRules, InstanceRow, classify, unmonitored_reason
from watchdog.resilience import retry_transient
from watchdog.store.database import Database, as_utc


class SqlInstanceStore:
    def __init__(self, db: Database, mapping: InstancesSettings, rules: DetectionRules) -> None:
        self._db = db
        self._map = mapping
        self._rules = rules
        schema, _, name = mapping.table.rpartition(".")
        columns = [
            mapping.id,
            mapping.enabled,
            mapping.status,
            mapping.status_changed_at,
            mapping.heartbeat,
            mapping.force_reconnect,
        ]
        if mapping.process:
            columns.append(mapping.process)
        self._table = sa.table(name, *(sa.column(c) for c in columns), schema=schema or None)
        self._scan_query = self._build_scan()

    def _col(self, name: str) -> sa.ColumnClause[Any]:
        return self._table.c[name]

    def _age(self, column: sa.ColumnClause[Any]) -> sa.ColumnElement[Any]:
        """Seconds between `column` and the database's now."""
        if self._db.is_sqlite:
            days = sa.func.julianday("now") - sa.func.julianday(column)
            return sa.cast(days * 86400.0, sa.Float)
        return sa.cast(sa.extract("epoch", sa.func.now() - column), sa.Float)

    def _build_scan(self) -> sa.Select[Any]:
        m, r = self._map, self._rules
        status, heartbeat = self._col(m.status), self._col(m.heartbeat)
        hb_age, st_age = self._age(heartbeat), self._age(self._col(m.status_changed_at))
        process = self._col(m.process) if m.process else sa.null()
        unhealthy = sa.or_(
            sa.and_(heartbeat.is_(None), st_age > r.stale_after),
            hb_age > r.stale_after,
            sa.and_(status.in_(sorted(r.connecting_statuses)), st_age > r.connecting_after),
        )
        monitored = [self._col(m.enabled) == sa.true()]
        if r.ignored_statuses:
            monitored.append(status.not_in(sorted(r.ignored_statuses)))
        where = [*monitored, unhealthy]
        candidates = (
            sa.select(
                self._col(m.id).label("id"),
                status.label("status"),
                process.label("process"),
                st_age.label("status_age"),
                hb_age.label("heartbeat_age"),
            )
            .where(*where)
            .subquery("candidates")
        )
        # The same pass counts the monitored fleet and finds the soonest deadline among
        # the healthy (mirrors policy.time_to_threshold), so the daemon can wake for it.
        beat_left = sa.case(
            (heartbeat.is_(None), r.stale_after - st_age), else_=r.stale_after - hb_age
        )
        connect_left = sa.case(
            (status.in_(sorted(r.connecting_statuses)), r.connecting_after - st_age)
        )
        fleet = (
            sa.select(
                sa.func.count().label("monitored"),
                sa.func.min(sa.case((beat_left > 0, beat_left))).label("beat_left"),
                sa.func.min(sa.case((connect_left > 0, connect_left))).label("connect_left"),
            )
            .select_from(self._table)
            .where(*monitored)
            .subquery("fleet")
        )
        clock = sa.select(self._db.now_expr().label("now"), *fleet.c).subquery("clock")
        # LEFT JOIN onto a one-row clock: one round trip returns the database's now even
        # when nothing is unhealthy.
        return sa.select(clock, candidates).select_from(clock.outerjoin(candidates, sa.true()))

    async def scan(self) -> Scan:
        """One detection query; a transient fault (SQLite busy, a dropped PostgreSQL
        connection) gets one more try on a fresh connection, a timeout does not."""
        return await retry_transient(self._scan_once, 2, "detection query", unless=StoreTimeout)

    async def _scan_once(self) -> Scan:
        async with self._db.connect("detection query") as conn:
            rows = (await conn.execute(self._scan_query)).all()
        findings: dict[str, Finding] = {}
        for row in rows:
            if row.id is None:
                continue
            finding = classify(self._row(row), self._rules)
            if finding is not None:
                findings[finding.instance_id] = finding
        first = rows[0]
        deadlines = [d for d in (first.beat_left, first.connect_left) if d is not None]
        return Scan(
            now=as_utc(first.now),
            findings=findings,
            enabled_count=first.monitored,
            next_deadline=float(min(deadlines)) if deadlines else None,
        )

    @staticmethod
    def _row(row: sa.Row[Any]) -> InstanceRow:
        return InstanceRow(
            instance_id=str(row.id),
            enabled=True,
            status=str(row.status),
            status_age=float(row.status_age),
            heartbeat_age=None if row.heartbeat_age is None else float(row.heartbeat_age),
            process=row.process,
        )

    async def set_force_reconnect(self, instance_id: str) -> bool:
        m = self._map
        statement = (
            sa.update(self._table)
            .where(self._col(m.id) == instance_id)
            .values({m.force_reconnect: sa.true()})
        )
        async with self._db.begin("set force_reconnect") as conn:
            result = await conn.execute(statement)
        return bool(result.rowcount)

    async def exists(self, instance_id: str) -> bool:
        query = sa.select(sa.literal(1)).where(self._col(self._map.id) == instance_id)
        async with self._db.connect("instance lookup") as conn:
            return (await conn.execute(query)).first() is not None

    async def unmonitored(self, instance_ids: Collection[str]) -> dict[str, str]:
        m = self._map
        query = sa.select(self._col(m.id), self._col(m.enabled), self._col(m.status)).where(
            self._col(m.id).in_(list(instance_ids))
        )
        async with self._db.connect("instance states") as conn:
            rows = {str(r[0]): (bool(r[1]), str(r[2])) for r in await conn.execute(query)}
        result: dict[str, str] = {}
        for instance_id in instance_ids:
            enabled, status = rows.get(instance_id, (None, None))
            why = unmonitored_reason(enabled, status, self._rules)
            if why is not None:
                result[instance_id] = why
        return result

    async def now(self) -> datetime:
        async with self._db.connect("database clock") as conn:
            return as_utc((await conn.execute(sa.select(self._db.now_expr()))).scalar_one())

    async def check(self) -> None:
        """Fail fast, naming the key to fix, when the mapped table or a column is missing."""
        probe = sa.select(*self._table.c).limit(1)
        async with self._db.connect("instances table check") as conn:
            await conn.execute(probe)
