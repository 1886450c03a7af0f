"""The application's table, mapped from `[instances]`: one detection query per cycle,
one aggregate returning the database clock and, as JSON, the rows near a threshold and
every row that cannot be judged (and, once a minute or when it matters, the counts of the
table and of the monitored rows, in the same pass).

How values are read (time zones, epoch numbers, text flags, case) is `readings.py`; the
query's WHERE clause mirrors `policy.classify` (a test checks that they agree), and the
reason is then decided by `classify` itself on the ages the database computed
(`judging.py`), so the rule lives in one place. Ages are measured on the database clock.

The only write is the force-reconnect flag.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from watchdog.config import InstancesSettings
from watchdog.errors import ConfigError, StoreTimeout
from watchdog.model import Scan
from watchdog.policy import DetectionRules, status_key, unmonitored_reason
from watchdog.resilience import retry_transient
from watchdog.store.database import Database, as_utc
from watchdog.store.judging import judge
from watchdog.store.readings import FlagKind, Reading, ReadingSql, TimeKind, flag_kind, time_kind

# PostgreSQL (14+) looks a list of this many entries up in a hash table built once per
# query; a shorter one is compared entry by entry on every row.
_HASHED_LIST = 9

_PG_COLUMNS = sa.text(
    "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull "
    "FROM pg_attribute a WHERE a.attrelid = to_regclass(:table) "
    "AND a.attnum > 0 AND NOT a.attisdropped"
)


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
        reading: Reading | None = None,
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
        self._use(reading or Reading.assumed(db.is_sqlite, mapping))

    def _use(self, reading: Reading) -> None:
        """Build every statement for this way of reading the table."""
        self._sql = ReadingSql(reading)
        self._counting_query = self._build_scan(counting=True)
        self._near_query = self._build_scan(counting=False)
        self._count_query = (
            sa.select(sa.func.count()).select_from(self._table).where(self._monitored())
        )

    @property
    def reading(self) -> Reading:
        return self._sql.reading

    def _col(self, name: str) -> sa.ColumnClause[Any]:
        return self._table.c[name]

    @property
    def detection_query(self) -> sa.Select[Any]:
        """The query most cycles run (the benchmark times it raw)."""
        return self._near_query

    @property
    def counting_query(self) -> sa.Select[Any]:
        """The same with the monitored count, run once a minute (the benchmark too)."""
        return self._counting_query

    def _build_scan(self, *, counting: bool) -> sa.Select[Any]:
        m, r, sql = self._map, self._rules, self._sql
        kinds = sql.reading
        status, heartbeat = self._col(m.status), self._col(m.heartbeat)
        changed = self._col(m.status_changed_at)
        process = self._col(m.process) if m.process else sa.null()
        ahead = self._lookahead
        # Unhealthy, within `lookahead` of it, or with a heartbeat that cannot be believed:
        # judging.judge() tells which, classify() picks the unhealthy ones and
        # time_to_threshold() the next deadline among the rest (the rules live there).
        near = sa.or_(
            sa.and_(
                heartbeat.is_(None),
                sql.older_than(changed, kinds.changed, r.stale_after - ahead),
            ),
            sql.outside(heartbeat, kinds.heartbeat, r.stale_after - ahead, r.max_clock_skew),
            sa.and_(
                self._status_in(r.connecting_statuses),
                sql.older_than(changed, kinds.changed, r.connecting_after - ahead),
            ),
        )
        bad = self._unjudgeable(heartbeat=False)  # the heartbeat's part is in `near`
        enabled = sql.enabled(self._col(m.enabled))
        fields = (
            self._col(m.id) if not kinds.sqlite else sql.text(self._col(m.id)),
            sql.text(status),
            sql.text(process) if m.process else process,
            sql.age(changed, kinds.changed),
            sql.age(heartbeat, kinds.heartbeat),
            sql.raw_if_unreadable(changed, kinds.changed),
            sql.raw_if_unreadable(heartbeat, kinds.heartbeat),
            self._raw_enabled(enabled),
        )
        # One aggregate, no GROUP BY: exactly one row back even when nothing matches, so
        # the database's now always comes back. The rows come as one JSON array of the
        # arrays `judging.judge` reads. Kept: the monitored rows near a threshold, and
        # every row that may be monitored but cannot be judged, so each one is reported
        # every cycle. Counting, every row is visited and the table and the monitored
        # rows counted; otherwise the WHERE clause holds only the cut-offs and the tests
        # for values that cannot be read, and the status list filters the aggregate (in
        # the WHERE clause the planner would test it on every row first).
        wanted = sa.or_(near, bad)
        keep = sa.or_(self._monitored(), sa.and_(self._maybe_monitored(enabled), bad))
        if counting:
            keep = sa.and_(wanted, keep)
        rows: sa.ColumnElement[Any]
        if self._db.is_sqlite:
            grouped = sa.func.json_group_array(sa.func.json_array(*fields)).filter(keep)
            rows = sa.type_coerce(grouped, sa.Text)
        else:
            # As text: psycopg would decode a json column itself; text reads alike on both.
            aggregated = sa.func.json_agg(sa.func.json_build_array(*fields)).filter(keep)
            rows = sa.cast(aggregated, sa.Text)
        clock = self._db.now_expr().label("now")
        if counting:
            monitored = sa.func.count().filter(self._monitored()).label("monitored")
            total = sa.func.count().label("total")
            query = sa.select(clock, monitored, total, rows.label("near"))
        else:
            missing = sa.null().label("monitored")
            query = sa.select(clock, missing, sa.null().label("total"), rows.label("near"))
            query = query.where(wanted)
        return query.select_from(self._table)

    def _unjudgeable(self, *, heartbeat: bool = True) -> sa.ColumnElement[bool]:
        """A value the rules need cannot be read, or a time is ahead of the database clock
        by more than the skew allowed. `heartbeat` False: the heartbeat's own test left
        out (the scan has it in its `near` test already)."""
        m, sql = self._map, self._sql
        kinds, not_null = sql.reading, sql.reading.not_null
        skew = self._rules.max_clock_skew
        row_id = self._col(m.id)
        nullable = m.status_changed_at not in not_null
        changed = self._col(m.status_changed_at)
        tests = [sql.unsure(changed, kinds.changed, skew, nullable=nullable)]
        if m.id not in not_null:
            tests.append(row_id.is_(None))
        if kinds.text_id is None:  # not inspected yet: whatever the type, as text
            tests.append(sa.cast(row_id, sa.Text) == "")
        elif kinds.text_id:
            tests.append(row_id == "")
        if m.status not in not_null:
            tests.append(self._col(m.status).is_(None))
        # A boolean or a number declared NOT NULL is always true or false; text may not be.
        if not (kinds.enabled in (FlagKind.BOOLEAN, FlagKind.NUMBER) and m.enabled in not_null):
            tests.append(sql.enabled_unreadable(self._col(m.enabled)))
        if heartbeat:
            beat = self._col(m.heartbeat)
            unsure = sql.unsure(beat, kinds.heartbeat, skew, nullable=False)
            tests.append(sa.and_(beat.is_not(None), unsure))
        return sa.or_(*tests)

    def _raw_enabled(self, enabled: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """The `enabled` value as text where it is neither true nor false; else NULL."""
        m, sql = self._map, self._sql
        if sql.reading.enabled is FlagKind.BOOLEAN and m.enabled in sql.reading.not_null:
            return sa.null()
        shown = sa.func.coalesce(sql.text(self._col(m.enabled)), "NULL")
        return sa.case((enabled.is_(None), shown))

    def _inline(self, statuses: Collection[str]) -> sa.BindParameter[Any]:
        """Configured statuses written into the SQL text as quoted literals, not parameters:
        PostgreSQL then folds the list once, where a prepared statement's parameter list is
        rebuilt for every one of the table's rows (a quarter of the query's time at 100k).
        On PostgreSQL the list is padded to a hashed lookup's length by repeating its last
        entry (same meaning): a third less time for the detection query at 100k rows."""
        listed = sorted(status_key(s) for s in statuses)
        if listed and not self._db.is_sqlite:
            listed += listed[-1:] * (_HASHED_LIST - len(listed))
        return sa.bindparam(None, listed, expanding=True, literal_execute=True)

    def _status_in(self, statuses: Collection[str]) -> sa.ColumnElement[bool]:
        listed = self._inline(statuses)
        lengths = sorted({len(status_key(s).encode()) for s in statuses})
        return self._sql.status_in(self._col(self._map.status), listed, lengths)

    def _monitored(self) -> sa.ColumnElement[bool]:
        """Enabled and not in an ignored status: the rows the watchdog looks after."""
        enabled = self._sql.enabled(self._col(self._map.enabled))
        monitored: list[sa.ColumnElement[bool]] = [enabled == sa.true()]
        if self._rules.ignored_statuses:
            monitored.append(sa.not_(self._status_in(self._rules.ignored_statuses)))
        return sa.and_(*monitored)

    def _maybe_monitored(self, enabled: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
        """Not known to be outside the watchdog's care: `enabled` is not false and the
        status is not an ignored one (either may be unreadable)."""
        maybe: list[sa.ColumnElement[bool]] = [sa.func.coalesce(enabled, sa.true()) == sa.true()]
        if self._rules.ignored_statuses:
            ignored = self._status_in(self._rules.ignored_statuses)
            maybe.append(sa.func.coalesce(sa.not_(ignored), sa.true()) == sa.true())
        return sa.and_(*maybe)

    async def scan(self) -> Scan:
        """One detection query; a transient fault (SQLite busy, a dropped PostgreSQL
        connection) gets one more try on a fresh connection, a timeout does not."""
        return await retry_transient(self._scan_once, 2, "detection query", unless=StoreTimeout)

    async def _scan_once(self) -> Scan:
        counted = self._counted
        counting = counted is None or self._monotonic() - counted[1] >= self._count_every
        params = self._sql.params(datetime.now(UTC))
        async with self._db.connect("detection query") as conn:
            query = self._counting_query if counting else self._near_query
            row = (await conn.execute(query, params)).one()
            # NULL (PostgreSQL) or '[]' (SQLite) when no row is kept.
            rows = json.loads(row.near) if row.near else ()
            findings, unjudgeable, deadline = judge(rows, self._map, self._rules)
            total = None if row.total is None else int(row.total)
            if counting:
                monitored = int(row.monitored)
            else:
                assert counted is not None
                monitored = counted[0]
                if len(findings) >= self._exact_share * monitored:  # a ratio may matter
                    statement = self._count_query
                    monitored = int((await conn.execute(statement, params)).scalar_one())
                    counting = True
        if counting:
            self._counted = (monitored, self._monotonic())
        return Scan(
            now=as_utc(row.now),
            findings=findings,
            enabled_count=monitored,
            next_deadline=deadline,
            unjudgeable=unjudgeable,
            rows_total=total,
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
        """Which of these instances left the watchdog's care, and why (`UNREADABLE`: the
        row is there but a value the rules need cannot be read). The database returns
        only the rows that may have (missing, not certainly monitored, unreadable), so
        thousands of ids of healthy instances cost one short answer."""
        m = self._map
        ids = self._db.listed("ids", instance_ids)
        row_id = self._col(m.id)
        enabled = self._sql.enabled(self._col(m.enabled))
        certainly_monitored = sa.func.coalesce(self._monitored(), sa.false())
        unreadable = sa.func.coalesce(self._unjudgeable(), sa.false())
        query = (
            sa.select(ids.c.value, row_id, enabled, self._col(m.status), unreadable)
            .select_from(ids.outerjoin(self._table, row_id == ids.c.value))
            .where(sa.or_(row_id.is_(None), sa.not_(certainly_monitored), unreadable))
        )
        async with self._db.connect("instance states") as conn:
            rows = (await conn.execute(query, self._sql.params(datetime.now(UTC)))).all()
        result: dict[str, str] = {}
        for instance_id, found, is_enabled, status, cannot_read in rows:
            if found is None:  # the row is gone
                why = unmonitored_reason(None, None, self._rules)
            else:
                readable = is_enabled is not None and not cannot_read
                text = None if status is None else str(status)
                why = unmonitored_reason(
                    bool(is_enabled) or not readable, text, self._rules, readable=readable
                )
            if why is not None:
                result[str(instance_id)] = why
        return result

    async def now(self) -> datetime:
        async with self._db.connect("database clock") as conn:
            return await self._db.read_now(conn)

    async def check(self) -> Reading:
        """Read the mapped table's columns and their types, then read the table the way
        they say (PostgreSQL) and return that reading. A missing table or column, or a
        type the watchdog cannot read, is a ConfigError naming the key to fix."""
        async with self._db.connect("instances table check") as conn:
            columns = await self._columns(conn)
            self._require(columns)
            await conn.execute(sa.select(*self._table.c).limit(1))  # and may we read it?
        reading = self._reading(columns)
        self._use(reading)
        return reading

    def _require(self, columns: Mapping[str, tuple[str, bool]]) -> None:
        m = self._map
        if not columns:
            raise ConfigError(
                f"config error: instances.table: the database has no table {m.table} (or this "
                "user cannot see it); fix [instances] table"
            )
        mapped = {
            "id": m.id,
            "enabled": m.enabled,
            "status": m.status,
            "status_changed_at": m.status_changed_at,
            "heartbeat": m.heartbeat,
            "force_reconnect": m.force_reconnect,
            "process": m.process,
        }
        for key, column in mapped.items():
            if column and column not in columns:
                raise ConfigError(
                    f"config error: instances.{key}: table {m.table} has no column {column}; "
                    f"fix [instances] {key} (columns: {', '.join(sorted(columns))})"
                )

    def _reading(self, columns: Mapping[str, tuple[str, bool]]) -> Reading:
        m = self._map
        not_null = frozenset(name for name, (_type, required) in columns.items() if required)
        if self._db.is_sqlite:
            return Reading(
                True,
                TimeKind.PER_VALUE,
                TimeKind.PER_VALUE,
                FlagKind.PER_VALUE,
                m.timezone,
                m.epoch_unit,
                not_null,
                text_id=True,
            )
        return Reading(
            False,
            time_kind(columns[m.status_changed_at][0], "status_changed_at", m.status_changed_at),
            time_kind(columns[m.heartbeat][0], "heartbeat", m.heartbeat),
            flag_kind(columns[m.enabled][0], m.enabled),
            m.timezone,
            m.epoch_unit,
            not_null,
            text_id=columns[m.id][0].split("(")[0] in ("text", "character varying", "character"),
        )

    async def _columns(self, conn: Any) -> Mapping[str, tuple[str, bool]]:
        """Column name → (declared type, NOT NULL) of the mapped table."""
        if not self._db.is_sqlite:
            found = await conn.execute(_PG_COLUMNS, {"table": self._map.table})
            return {str(name): (str(kind), bool(required)) for name, kind, required in found}
        schema, _, name = self._map.table.rpartition(".")
        pragma = (
            f'PRAGMA "{schema}".table_info("{name}")'
            if schema
            else (f'PRAGMA table_info("{name}")')
        )
        found = await conn.execute(sa.text(pragma))
        return {str(r[1]): (str(r[2]), bool(r[3])) for r in found}
