"""The application's table, mapped from `[instances]`: one detection query per cycle,
one aggregate returning the database clock and the rows near a threshold as JSON (and,
once a minute or when it matters, the monitored count, in the same pass).

The query's WHERE clause mirrors `policy.classify` (a test checks that they agree);
the reason is then decided by `classify` itself on the ages the database computed, so
the rule lives in one place. Ages are measured on the database clock.

The only write is the force-reconnect flag.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from watchdog.config import InstancesSettings
from watchdog.errors import StoreTimeout
from watchdog.model import Finding, Scan, Unjudgeable
from watchdog.policy import (
    DetectionRules,
    InstanceRow,
    classify,
    time_to_threshold,
    unmonitored_reason,
)
from watchdog.resilience import retry_transient
from watchdog.store.database import Database, as_utc

# PostgreSQL (14+) looks a list of this many entries up in a hash table built once per
# query; a shorter one is compared entry by entry on every row.
_HASHED_LIST = 9
_RAW_CHARS = 64  # of a value that cannot be read, as reported

_FIX_ID = "give the row a non-empty text id: an instance without one cannot be addressed"
_FIX_STATUS = "the application must write a status into the row"
_FIX_PROCESS = "write the hosting program's name as text, or NULL for the configured default"
_FIX_TIME = (
    "the application must write timestamps the database can read "
    "(timestamptz; in SQLite, its own text format or ISO-8601 in UTC)"
)

_Judged = tuple[dict[str, Finding], tuple[Unjudgeable, ...], float | None]


def _sqlite_text(
    value: sa.ColumnElement[Any], *, unless_time: bool = False
) -> sa.ColumnElement[Any]:
    """An SQLite value for the JSON aggregate: text, or a BLOB as a one-element JSON array
    of its hex (a BLOB itself would fail the whole statement, and one that is not UTF-8
    would fail it as text). `unless_time`: NULL when julianday() can read the value."""
    as_text = sa.case(
        (sa.func.typeof(value) == "blob", sa.func.json_array(sa.func.hex(value))),
        else_=sa.cast(value, sa.Text),
    )
    if unless_time:
        return sa.case((sa.func.julianday(value).is_(None), as_text))
    return as_text


def _binary(value: object) -> bool:
    """A BLOB as `_sqlite_text` sends it."""
    return isinstance(value, list)


def _cut(raw: object) -> str | None:
    if raw is None:
        return None
    text = f"x'{raw[0]}'" if isinstance(raw, list) and raw else str(raw)
    return text if len(text) <= _RAW_CHARS else text[: _RAW_CHARS - 1] + "…"


class SqlInstanceStore:
    """`lookahead`: the scan also returns healthy rows this close (in seconds) to a
    threshold, so the daemon can wake at the next deadline; pass about one interval.

    The monitored count (`Scan.enabled_count`) is a full pass over the table, and most
    cycles only need the rows near a threshold: it is counted at least every
    `count_every` seconds, and at once whenever the unhealthy are at least `exact_share`
    of the last count, so a ratio that matters (the mass-failure brake) is always exact.
    """

    def __init__(
        self,
        db: Database,
        mapping: InstancesSettings,
        rules: DetectionRules,
        lookahead: float = 6.0,
        *,
        count_every: float = 60.0,
        exact_share: float = 0.25,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._map = mapping
        self._rules = rules
        self._lookahead = max(1.0, lookahead)
        self._count_every = count_every
        self._exact_share = exact_share
        self._monotonic = monotonic
        self._counted: tuple[int, float] | None = None  # (monitored, when: monotonic)
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
        self._counting_query = self._build_scan(counting=True)
        self._near_query = self._build_scan(counting=False)
        self._count_query = (
            sa.select(sa.func.count()).select_from(self._table).where(*self._monitored())
        )

    def _col(self, name: str) -> sa.ColumnClause[Any]:
        return self._table.c[name]

    def _age(self, column: sa.ColumnClause[Any]) -> sa.ColumnElement[Any]:
        """Seconds between `column` and the database's now."""
        if self._db.is_sqlite:
            days = sa.func.julianday("now") - sa.func.julianday(column)
            return sa.cast(days * 86400.0, sa.Float)
        return sa.cast(sa.extract("epoch", sa.func.now() - column), sa.Float)

    def _older_than(self, column: sa.ColumnClause[Any], seconds: float) -> sa.ColumnElement[Any]:
        """`column` lies more than `seconds` before the database's now. Written as a plain
        comparison of the column (no per-row arithmetic on it): cheap on every row, and an
        index on the column can serve it."""
        if self._db.is_sqlite:  # text timestamps in more than one format: julianday()
            return sa.func.julianday(column) < sa.func.julianday("now") - seconds / 86400.0
        interval: sa.ColumnElement[Any] = sa.literal_column(f"interval '{seconds:.6f} seconds'")
        return column < sa.func.now() - interval

    @property
    def detection_query(self) -> sa.Select[Any]:
        """The query most cycles run (the benchmark times it raw)."""
        return self._near_query

    @property
    def counting_query(self) -> sa.Select[Any]:
        """The same with the monitored count, run once a minute (the benchmark too)."""
        return self._counting_query

    def _build_scan(self, *, counting: bool) -> sa.Select[Any]:
        m, r = self._map, self._rules
        status, heartbeat = self._col(m.status), self._col(m.heartbeat)
        changed = self._col(m.status_changed_at)
        process = self._col(m.process) if m.process else sa.null()
        ahead = self._lookahead
        # Unhealthy, or within `lookahead` of it: classify() picks the unhealthy ones and
        # time_to_threshold() the next deadline among the rest (the rules live there).
        near = sa.or_(
            sa.and_(heartbeat.is_(None), self._older_than(changed, r.stale_after - ahead)),
            self._older_than(heartbeat, r.stale_after - ahead),
            sa.and_(
                status.in_(self._inline(r.connecting_statuses)),
                self._older_than(changed, r.connecting_after - ahead),
            ),
        )
        monitored = self._monitored()
        fields: tuple[sa.ColumnElement[Any], ...] = (
            self._col(m.id),
            status,
            process,
            self._age(changed),
            self._age(heartbeat),
        )
        if self._db.is_sqlite:
            # SQLite columns hold any type: values as text (see `_sqlite_text`), and the
            # raw timestamps that julianday() cannot read, so that garbage is reported,
            # never mistaken for NULL ("never beat").
            fields = (
                *(_sqlite_text(f) for f in fields[:3]),
                *fields[3:],
                _sqlite_text(changed, unless_time=True),
                _sqlite_text(heartbeat, unless_time=True),
            )
        # One aggregate, no GROUP BY: exactly one row back even when nothing matches, so
        # the database's now always comes back. The candidates come as one JSON array of
        # [id, status, process, status_age, heartbeat_age(, raw unreadable status_changed_at,
        # raw unreadable heartbeat on SQLite)] arrays. Counting, every
        # monitored row is visited (and counted) and the near ones aggregated; otherwise
        # the WHERE clause holds only the timestamp cut-offs and the status list filters
        # the aggregate (in the WHERE clause the planner would test it on every row first).
        keep = near if counting else sa.and_(*monitored)
        near_rows: sa.ColumnElement[Any]
        if self._db.is_sqlite:
            grouped = sa.func.json_group_array(sa.func.json_array(*fields)).filter(keep)
            near_rows = sa.type_coerce(grouped, sa.Text)
        else:
            # As text: psycopg would decode a json column itself; text reads alike on both.
            aggregated = sa.func.json_agg(sa.func.json_build_array(*fields)).filter(keep)
            near_rows = sa.cast(aggregated, sa.Text)
        clock = self._db.now_expr().label("now")
        if counting:
            counted = sa.func.count().label("monitored")
            query = sa.select(clock, counted, near_rows.label("near")).where(*monitored)
        else:
            missing = sa.null().label("monitored")
            query = sa.select(clock, missing, near_rows.label("near")).where(near)
        return query.select_from(self._table)

    def _inline(self, statuses: Collection[str]) -> sa.BindParameter[Any]:
        """Configured statuses written into the SQL text as quoted literals, not parameters:
        PostgreSQL then folds the list once, where a prepared statement's parameter list is
        rebuilt for every one of the table's rows (a quarter of the query's time at 100k).
        On PostgreSQL the list is padded to a hashed lookup's length by repeating its last
        entry (same meaning): a third less time for the detection query at 100k rows."""
        listed = sorted(statuses)
        if listed and not self._db.is_sqlite:
            listed += listed[-1:] * (_HASHED_LIST - len(listed))
        return sa.bindparam(None, listed, expanding=True, literal_execute=True)

    def _monitored(self) -> list[sa.ColumnElement[bool]]:
        """Enabled and not in an ignored status: the rows the watchdog looks after."""
        monitored = [self._col(self._map.enabled) == sa.true()]
        if self._rules.ignored_statuses:
            ignored = self._inline(self._rules.ignored_statuses)
            monitored.append(self._col(self._map.status).not_in(ignored))
        return monitored

    async def scan(self) -> Scan:
        """One detection query; a transient fault (SQLite busy, a dropped PostgreSQL
        connection) gets one more try on a fresh connection, a timeout does not."""
        return await retry_transient(self._scan_once, 2, "detection query", unless=StoreTimeout)

    async def _scan_once(self) -> Scan:
        counted = self._counted
        counting = counted is None or self._monotonic() - counted[1] >= self._count_every
        async with self._db.connect("detection query") as conn:
            query = self._counting_query if counting else self._near_query
            row = (await conn.execute(query)).one()
            findings, unjudgeable, deadline = self._judge(row.near)
            if counting:
                monitored = int(row.monitored)
            else:
                assert counted is not None
                monitored = counted[0]
                if len(findings) >= self._exact_share * monitored:  # a ratio may matter
                    monitored = int((await conn.execute(self._count_query)).scalar_one())
                    counting = True
        if counting:
            self._counted = (monitored, self._monotonic())
        return Scan(
            now=as_utc(row.now),
            findings=findings,
            enabled_count=monitored,
            next_deadline=deadline,
            unjudgeable=unjudgeable,
        )

    def _judge(self, near_rows: str | None) -> _Judged:
        """The findings among the rows near a threshold, the rows that cannot be judged,
        and the soonest deadline among the healthy rest (seconds)."""
        findings: dict[str, Finding] = {}
        unjudgeable: list[Unjudgeable] = []
        deadline: float | None = None
        rules = self._rules
        # NULL (PostgreSQL) or '[]' (SQLite) when no row is near a threshold. Positional:
        # a thousand rows a cycle after a mass failure. A bad value is its row's problem:
        # that row is reported and skipped, every other row is judged as usual.
        for fields in json.loads(near_rows) if near_rows else ():
            instance = self._read(fields)
            if isinstance(instance, Unjudgeable):
                unjudgeable.append(instance)
                continue
            finding = classify(instance, rules)
            if finding is not None:
                findings[finding.instance_id] = finding
                continue
            left = time_to_threshold(instance, rules)
            if left is not None and (deadline is None or left < deadline):
                deadline = left
        return findings, tuple(unjudgeable), deadline

    def _read(self, fields: list[Any]) -> InstanceRow | Unjudgeable:
        """One near row as an InstanceRow, or why it cannot be judged. The id comes as text
        whatever the column's type (a JSON number for an integer id on PostgreSQL)."""
        m = self._map
        instance_id, status, process, status_age, heartbeat_age = fields[:5]
        raw_changed, raw_heartbeat = fields[5:] if len(fields) > 5 else (None, None)
        if _binary(instance_id):
            return Unjudgeable(_cut(instance_id), m.id, _cut(instance_id), "binary", _FIX_ID)
        if instance_id is None or instance_id == "":
            value = None if instance_id is None else ""
            why = "the id is NULL" if value is None else "the id is empty"
            return Unjudgeable(value, m.id, value, why, _FIX_ID)
        name = str(instance_id)
        if status is None or _binary(status):
            why = "binary" if status is not None else "the status is NULL"
            return Unjudgeable(name, m.status, _cut(status), why, _FIX_STATUS)
        if _binary(process):
            return Unjudgeable(name, m.process, _cut(process), "binary", _FIX_PROCESS)
        if status_age is None:
            why = "not a timestamp" if raw_changed is not None else "NULL"
            return Unjudgeable(name, m.status_changed_at, _cut(raw_changed), why, _FIX_TIME)
        if heartbeat_age is None and raw_heartbeat is not None:
            why = "not a timestamp"
            return Unjudgeable(name, m.heartbeat, _cut(raw_heartbeat), why, _FIX_TIME)
        try:
            return InstanceRow(
                name,
                True,
                str(status),
                float(status_age),
                None if heartbeat_age is None else float(heartbeat_age),
                None if process is None else str(process),
            )
        except (TypeError, ValueError) as exc:  # whatever else a hand-made table holds
            why = f"unreadable: {exc}"
            return Unjudgeable(name, m.status_changed_at, None, why, _FIX_TIME)

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
        """Which of these instances left the watchdog's care, and why (`UNREADABLE`: the
        row is there but its status or a timestamp cannot be read). The database returns
        only the rows that may have (missing, not certainly monitored, unreadable), so
        thousands of ids of healthy instances cost one short answer."""
        m = self._map
        ids = self._db.listed("ids", instance_ids)
        row_id = self._col(m.id)
        certainly_monitored = sa.func.coalesce(sa.and_(*self._monitored()), sa.false())
        readable = sa.func.coalesce(self._readable(), sa.false())
        query = (
            sa.select(ids.c.value, row_id, self._col(m.enabled), self._col(m.status), readable)
            .select_from(ids.outerjoin(self._table, row_id == ids.c.value))
            .where(sa.or_(row_id.is_(None), sa.not_(certainly_monitored), sa.not_(readable)))
        )
        async with self._db.connect("instance states") as conn:
            rows = (await conn.execute(query)).all()
        result: dict[str, str] = {}
        for instance_id, found, enabled, status, can_read in rows:
            if found is None:  # the row is gone
                enabled, status = None, None
            else:
                enabled = bool(enabled)
                status = None if status is None else str(status)
            why = unmonitored_reason(enabled, status, self._rules, readable=bool(can_read))
            if why is not None:
                result[str(instance_id)] = why
        return result

    def _readable(self) -> sa.ColumnElement[bool]:
        """The timestamps the rules need can be read (a NULL heartbeat is "never beat")."""
        changed = self._col(self._map.status_changed_at)
        heartbeat = self._col(self._map.heartbeat)
        if not self._db.is_sqlite:
            return changed.is_not(None)
        return sa.and_(
            sa.func.julianday(changed).is_not(None),
            sa.or_(heartbeat.is_(None), sa.func.julianday(heartbeat).is_not(None)),
        )

    async def now(self) -> datetime:
        async with self._db.connect("database clock") as conn:
            return await self._db.read_now(conn)

    async def check(self) -> None:
        """Fail fast, naming the key to fix, when the mapped table or a column is missing."""
        probe = sa.select(*self._table.c).limit(1)
        async with self._db.connect("instances table check") as conn:
            await conn.execute(probe)
