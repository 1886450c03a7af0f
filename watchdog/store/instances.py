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
from watchdog.core.errors import StoreTimeout
from watchdog.core.model import Census, Finding, RowFacts, Scan
from watchdog.core.policy import DetectionRules, unmonitored_reason
from watchdog.resilience import retry_transient
from watchdog.store import inspection
from watchdog.store.database import Database, FrozenStatement, as_utc
from watchdog.store.judging import cut, judge, verdict
from watchdog.store.predicates import RowTests
from watchdog.store.readings import Reading, ReadingSql

_KNOWN = "known_ids"  # the driver parameter of the ids the caller judged unhealthy


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
        ledger_revision: sa.ScalarSelect[Any] | None = None,
    ) -> None:
        self._db = db
        self._map = mapping
        self._rules = rules
        self._lookahead = max(1.0, lookahead)
        self._count_every = count_every
        self._exact_share = exact_share
        self._monotonic = monotonic
        self._counted: tuple[int, float] | None = None  # (monitored, when: monotonic)
        self._ledger_revision = ledger_revision
        self._checked: Reading | None = None
        schema, _, name = mapping.table.rpartition(".")
        columns = mapping.columns().values()
        self._table = sa.table(name, *(sa.column(c) for c in columns), schema=schema or None)
        self._use(reading or Reading.assumed(db.is_sqlite, mapping))

    def _use(self, reading: Reading) -> None:
        """Build every statement for this way of reading the table."""
        self._sql = ReadingSql(reading)
        self._tests = RowTests(self._table, self._map, self._rules, self._sql)
        self._counting_query = FrozenStatement(self._db, self._build_scan(counting=True))
        self._near_query = FrozenStatement(self._db, self._build_scan(counting=False))
        # The same, told the ids judged unhealthy at the last scan (see `scan`).
        self._counting_known = FrozenStatement(
            self._db, self._build_scan(counting=True, known=True)
        )
        self._near_known = FrozenStatement(self._db, self._build_scan(counting=False, known=True))
        count = sa.select(sa.func.count()).select_from(self._table).where(self._tests.monitored())
        self._count_query = FrozenStatement(self._db, count)

    @property
    def reading(self) -> Reading:
        return self._sql.reading

    @property
    def checked(self) -> Reading | None:
        """The reading `check()` found, or None before it ran."""
        return self._checked

    def _col(self, name: str) -> sa.ColumnClause[Any]:
        return self._table.c[name]

    @property
    def detection_sql(self) -> str:
        """The SQL most cycles run, as sent now (the benchmark times it raw)."""
        return self._near_query.text(self._sql.params(datetime.now(UTC)))

    def detection_sql_knowing(self, known: Collection[str]) -> str:
        """The SQL the engine's steady cycles run (told the ids it judged unhealthy last
        time), with those ids written in: the benchmark times it raw."""
        text = self._near_known.text(self._sql.params(datetime.now(UTC)))
        value = sa.literal(json.dumps(list(known)), sa.Text)
        written = str(
            value.compile(dialect=self._db.engine.dialect, compile_kwargs={"literal_binds": True})
        )
        if not self._db.is_sqlite:
            written = written.replace("%", "%%")  # as literal rendering writes it for psycopg
        return text.replace(self._db.driver_placeholder(_KNOWN), written)

    @property
    def counting_sql(self) -> str:
        """The same with the monitored count, run once a minute (the benchmark too)."""
        return self._counting_query.text(self._sql.params(datetime.now(UTC)))

    def _build_scan(self, *, counting: bool, known: bool = False) -> sa.Select[Any]:
        tests = self._tests
        near = tests.near(self._lookahead)
        bad = tests.unjudgeable(heartbeat=False)  # the heartbeat's part is in `near`
        # One aggregate, no GROUP BY: exactly one row back even when nothing matches, so
        # the database's now always comes back. The rows come as one JSON array of the
        # arrays `judging.judge` reads. Kept: the monitored rows near a threshold, and
        # every row that may be monitored but cannot be judged, so each one is reported
        # every cycle. Counting, every row is visited and the table and the monitored
        # rows counted; otherwise the WHERE clause holds only the cut-offs and the tests
        # for values that cannot be read, and the status list filters the aggregate (in
        # the WHERE clause the planner would test it on every row first).
        wanted = sa.or_(near, bad)
        keep = sa.or_(tests.monitored(), sa.and_(tests.maybe_monitored(), bad))
        if counting:
            keep = sa.and_(wanted, keep)
        rows = self._aggregate(keep, known=known)
        clock = self._db.now_expr().label("now")
        # The ledger's revision rides along, so a steady cycle is this one statement.
        revision = (sa.null() if self._ledger_revision is None else self._ledger_revision).label(
            "ledger_revision"
        )
        if counting:
            monitored = sa.func.count().filter(tests.monitored()).label("monitored")
            total = sa.func.count().label("total")
            query = sa.select(clock, monitored, total, rows.label("near"), revision)
        else:
            missing = sa.null().label("monitored")
            nothing = sa.null().label("total")
            query = sa.select(clock, missing, nothing, rows.label("near"), revision)
            query = query.where(wanted)
        return query.select_from(self._table)

    def _aggregate(self, keep: sa.ColumnElement[bool], *, known: bool) -> sa.ColumnElement[Any]:
        """The kept rows as one JSON array of arrays, as text; `known`: a row the caller
        judged unhealthy last time and still is comes as the array of its id alone."""
        sqlite = self._db.is_sqlite
        array = sa.func.json_array if sqlite else sa.func.json_build_array
        if known:
            ids = self._db.listed_by_driver(_KNOWN)
            row = self._tests.row_or_known(array, ids)
        else:
            row = self._tests.row_array(array)
        if sqlite:
            return sa.type_coerce(sa.func.json_group_array(row).filter(keep), sa.Text)
        # As text: psycopg would decode a json column itself; text reads alike on both.
        return sa.cast(sa.func.json_agg(row).filter(keep), sa.Text)

    async def scan(self, known: Mapping[str, Finding] | None = None) -> Scan:
        """One detection query; a transient fault (SQLite busy, a dropped PostgreSQL
        connection) gets one more try on a fresh connection, a timeout does not.

        `known`: the findings of the caller's last scan. A row among them that is still
        unhealthy (and readable) is not read and judged again: its finding is reused,
        ages and all (the engine's view of an incident it already has; `status` and
        `explain` scan without it)."""

        async def once() -> Scan:
            return await self._scan_once(known or {})

        return await retry_transient(once, 2, "detection query", unless=StoreTimeout)

    async def _scan_once(self, known: Mapping[str, Finding]) -> Scan:
        counted = self._counted
        counting = counted is None or self._monotonic() - counted[1] >= self._count_every
        params = self._sql.params(datetime.now(UTC))
        if known:
            query = self._counting_known if counting else self._near_known
            given = {_KNOWN: json.dumps(list(known))}
        else:
            query = self._counting_query if counting else self._near_query
            given = {}
        async with self._db.steady("detection query") as conn:
            row = (await query.execute(conn, params, given)).one()
            # NULL (PostgreSQL) or '[]' (SQLite) when no row is kept.
            rows = json.loads(row.near) if row.near else ()
            findings, unjudgeable, deadline = judge(rows, self._map, self._rules, known)
            total = None if row.total is None else int(row.total)
            if counting:
                monitored = int(row.monitored)
            else:
                assert counted is not None
                monitored = counted[0]
                if len(findings) >= self._exact_share * monitored:  # a ratio may matter
                    count = await self._count_query.execute(conn, params)
                    monitored = int(count.scalar_one())
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
            ledger_revision=None if row.ledger_revision is None else int(row.ledger_revision),
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
        enabled = self._tests.enabled
        certainly_monitored = sa.func.coalesce(self._tests.monitored(), sa.false())
        unreadable = sa.func.coalesce(self._tests.unjudgeable(), sa.false())
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
                # An `enabled` that cannot be read is not "disabled": `readable` says why.
                readable = is_enabled is not None and not cannot_read
                on = True if is_enabled is None else bool(is_enabled)
                text = None if status is None else str(status)
                why = unmonitored_reason(on, text, self._rules, readable=readable)
            if why is not None:
                result[str(instance_id)] = why
        return result

    async def census(self, scan: Scan) -> Census:
        """Every row counted once by what the watchdog makes of it (one pass): healthy,
        unhealthy (`scan`'s findings, a scan made just before), unjudgeable, disabled or
        ignored; `monitored` is the healthy, the unhealthy and the unjudgeable whose
        `enabled` and status could be read."""
        t = self._tests
        bad = t.unjudgeable()
        query = sa.select(
            sa.func.count(),
            sa.func.count().filter(t.monitored()),
            sa.func.count().filter(t.enabled == sa.false()),
            sa.func.count().filter(
                sa.and_(sa.func.coalesce(t.enabled, sa.true()) == sa.true(), t.ignored())
            ),
            sa.func.count().filter(sa.and_(t.maybe_monitored(), bad)),
            sa.func.count().filter(sa.and_(t.monitored(), bad)),
        ).select_from(self._table)
        async with self._db.connect("census") as conn:
            counts = (await conn.execute(query, self._sql.params(datetime.now(UTC)))).one()
        rows, monitored, disabled, ignored, unjudgeable, unjudgeable_monitored = map(int, counts)
        unhealthy = len(scan.findings)
        healthy = max(0, monitored - unhealthy - unjudgeable_monitored)
        return Census(rows, monitored, healthy, unhealthy, disabled, ignored, unjudgeable)

    async def monitored_by_process(self) -> dict[str | None, tuple[int, int]]:
        """The monitored rows by their process column: (monitored, judgeable) each, one
        pass. Without a process column every row counts under None."""
        t, m = self._tests, self._map
        process = self._tests.sql.text(self._col(m.process)) if m.process else sa.null()
        query = (
            sa.select(
                process.label("process"),
                sa.func.count(),
                sa.func.count().filter(sa.not_(sa.func.coalesce(t.unjudgeable(), sa.false()))),
            )
            .select_from(self._table)
            .where(t.monitored())
            .group_by(process)
        )
        async with self._db.connect("instances by process") as conn:
            rows = (await conn.execute(query, self._sql.params(datetime.now(UTC)))).all()
        return {
            (None if p is None else str(p)): (int(monitored), int(judgeable))
            for p, monitored, judgeable in rows
        }

    async def inspect_row(self, instance_id: str) -> RowFacts | None:
        """One row read now, or None when the table has no such id."""
        m, t, sql = self._map, self._tests, self._sql
        shown_columns = [c for key, c in m.columns().items() if key != "force_reconnect"]
        raw = [sql.text(self._col(column)) for column in shown_columns]
        query = (
            sa.select(t.enabled, t.ignored(), *raw, *t.fields())
            .select_from(self._table)
            .where(sa.cast(self._col(m.id), sa.Text) == instance_id)
            .limit(1)
        )
        async with self._db.connect("instance row") as conn:
            row = (await conn.execute(query, sql.params(datetime.now(UTC)))).first()
        if row is None:
            return None
        enabled, ignored, values = row[0], row[1], row[2 : 2 + len(raw)]
        shown = {column: cut(v) for column, v in zip(shown_columns, values, strict=True)}
        rest = list(row[2 + len(raw) :])
        return verdict(instance_id, enabled, ignored, shown, rest, self._map, self._rules)

    async def now(self) -> datetime:
        async with self._db.connect("database clock") as conn:
            return await self._db.read_now(conn)

    async def check(self) -> Reading:
        """Read the mapped table's columns and their types, then read the table the way
        they say (PostgreSQL) and return that reading. A missing table or column, or a
        type the watchdog cannot read, is a ConfigError naming the key to fix."""
        async with self._db.connect("instances table check") as conn:
            found = await inspection.columns(conn, self._db.is_sqlite, self._map.table)
            inspection.require(found, self._map)
            await conn.execute(sa.select(*self._table.c).limit(1))  # and may we read it?
        reading = inspection.reading(found, self._map, self._db.is_sqlite)
        self._use(reading)
        self._checked = reading
        return reading
