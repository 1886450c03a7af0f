"""The tests the watchdog makes of a row of the application's table, as SQL: which rows
it looks after, which it cannot judge, which are near a threshold. One place, used by the
detection query, the check of incidents whose instance left the scan, and the census
behind `watchdogctl status`; how each value is read is `readings.py`."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import sqlalchemy as sa

from watchdog.config import InstancesSettings
from watchdog.core.policy import DetectionRules, status_key
from watchdog.store.readings import FlagKind, ReadingSql

# PostgreSQL (14+) looks a list of this many entries up in a hash table built once per
# query; a shorter one is compared entry by entry on every row.
_HASHED_LIST = 9


class RowTests:
    def __init__(
        self,
        table: sa.TableClause,
        mapping: InstancesSettings,
        rules: DetectionRules,
        sql: ReadingSql,
    ) -> None:
        self._table = table
        self._map = mapping
        self._rules = rules
        self.sql = sql

    def col(self, name: str) -> sa.ColumnClause[Any]:
        return self._table.c[name]

    @property
    def enabled(self) -> sa.ColumnElement[Any]:
        """True, false, or NULL when the value cannot be read."""
        return self.sql.enabled(self.col(self._map.enabled))

    def near(self, lookahead: float) -> sa.ColumnElement[bool]:
        """Unhealthy, within `lookahead` seconds of it, or with a heartbeat that cannot be
        believed: `judging.judge` tells which (mirrors `policy.classify`)."""
        m, r, sql = self._map, self._rules, self.sql
        kinds = sql.reading
        heartbeat, changed = self.col(m.heartbeat), self.col(m.status_changed_at)
        return sa.or_(
            sa.and_(
                heartbeat.is_(None),
                sql.older_than(changed, kinds.changed, r.stale_after - lookahead),
            ),
            sql.outside(heartbeat, kinds.heartbeat, r.stale_after - lookahead, r.max_clock_skew),
            sa.and_(
                self.status_in(r.connecting_statuses),
                sql.older_than(changed, kinds.changed, r.connecting_after - lookahead),
            ),
        )

    def unjudgeable(self, *, heartbeat: bool = True) -> sa.ColumnElement[bool]:
        """A value the rules need cannot be read, or a time is ahead of the database clock
        by more than the skew allowed. `heartbeat` False: the heartbeat's own test left
        out (`near` has it already)."""
        m, sql = self._map, self.sql
        kinds, not_null = sql.reading, sql.reading.not_null
        skew = self._rules.max_clock_skew
        row_id = self.col(m.id)
        nullable = m.status_changed_at not in not_null
        changed = self.col(m.status_changed_at)
        tests = [sql.unsure(changed, kinds.changed, skew, nullable=nullable)]
        if m.id not in not_null:
            tests.append(row_id.is_(None))
        if kinds.text_id is None:  # not inspected yet: whatever the type, as text
            tests.append(sa.cast(row_id, sa.Text) == "")
        elif kinds.text_id:
            tests.append(row_id == "")
        if m.status not in not_null:
            tests.append(self.col(m.status).is_(None))
        # A boolean or a number declared NOT NULL is always true or false; text may not be.
        if not (kinds.enabled in (FlagKind.BOOLEAN, FlagKind.NUMBER) and m.enabled in not_null):
            tests.append(sql.enabled_unreadable(self.col(m.enabled)))
        if heartbeat:
            beat = self.col(m.heartbeat)
            unsure = sql.unsure(beat, kinds.heartbeat, skew, nullable=False)
            tests.append(sa.and_(beat.is_not(None), unsure))
        return sa.or_(*tests)

    def monitored(self) -> sa.ColumnElement[bool]:
        """Enabled and not in an ignored status: the rows the watchdog looks after."""
        monitored: list[sa.ColumnElement[bool]] = [self.enabled == sa.true()]
        if self._rules.ignored_statuses:
            monitored.append(sa.not_(self.status_in(self._rules.ignored_statuses)))
        return sa.and_(*monitored)

    def maybe_monitored(self) -> sa.ColumnElement[bool]:
        """Not known to be outside the watchdog's care: `enabled` is not false and the
        status is not an ignored one (either may be unreadable)."""
        maybe: list[sa.ColumnElement[bool]] = [
            sa.func.coalesce(self.enabled, sa.true()) == sa.true()
        ]
        if self._rules.ignored_statuses:
            ignored = self.status_in(self._rules.ignored_statuses)
            maybe.append(sa.func.coalesce(sa.not_(ignored), sa.true()) == sa.true())
        return sa.and_(*maybe)

    def ignored(self) -> sa.ColumnElement[bool]:
        """In a status the watchdog never recovers."""
        if not self._rules.ignored_statuses:
            return sa.false()
        return sa.func.coalesce(self.status_in(self._rules.ignored_statuses), sa.false())

    def raw_enabled(self) -> sa.ColumnElement[Any]:
        """The `enabled` value as text where it is neither true nor false; else NULL."""
        m, sql = self._map, self.sql
        if sql.reading.enabled is FlagKind.BOOLEAN and m.enabled in sql.reading.not_null:
            return sa.null()
        shown = sa.func.coalesce(sql.text(self.col(m.enabled)), "NULL")
        return sa.case((self.enabled.is_(None), shown))

    def fields(self) -> tuple[sa.ColumnElement[Any], ...]:
        """One row as `judging.read` takes it."""
        m, sql = self._map, self.sql
        kinds = sql.reading
        status, heartbeat = self.col(m.status), self.col(m.heartbeat)
        changed = self.col(m.status_changed_at)
        process = self.col(m.process) if m.process else sa.null()
        return (
            self.col(m.id) if not kinds.sqlite else sql.text(self.col(m.id)),
            sql.text(status),
            sql.text(process) if m.process else process,
            sql.age(changed, kinds.changed),
            sql.age(heartbeat, kinds.heartbeat),
            sql.raw_if_unreadable(changed, kinds.changed),
            sql.raw_if_unreadable(heartbeat, kinds.heartbeat),
            self.raw_enabled(),
        )

    def row_array(self, array: Callable[..., sa.ColumnElement[Any]]) -> sa.ColumnElement[Any]:
        """`fields()` as one JSON array (`array`: the dialect's constructor), without the
        three raw values when none is set: most rows, and every row of a typed table,
        travel as five values (less JSON to build, send and parse every cycle)."""
        fields = self.fields()
        core, raws = fields[:5], fields[5:]
        maybe = [raw for raw in raws if not isinstance(raw, sa.sql.elements.Null)]
        if not maybe:
            return array(*core)
        unset = sa.and_(*(raw.is_(None) for raw in maybe))
        return sa.case((unset, array(*core)), else_=array(*fields))

    def row_or_known(
        self,
        array: Callable[..., sa.ColumnElement[Any]],
        known: sa.FromClause,
    ) -> sa.ColumnElement[Any]:
        """`row_array()`, or the one-element array of the row's id when its id is in
        `known` (a derived table of ids the caller judged unhealthy at its last scan) and
        the row is still unhealthy and every value readable: the caller keeps what it
        judged then, instead of reading and judging the same row again every cycle."""
        row_id = sa.cast(self.col(self._map.id), sa.Text)
        still = sa.and_(
            row_id.in_(sa.select(known.c.value)),
            self.near(0.0),
            sa.not_(sa.func.coalesce(self.unjudgeable(), sa.false())),
        )
        return sa.case((still, array(row_id)), else_=self.row_array(array))

    def status_in(self, statuses: Collection[str]) -> sa.ColumnElement[bool]:
        listed = self._inline(statuses)
        lengths = sorted({len(status_key(s).encode()) for s in statuses})
        return self.sql.status_in(self.col(self._map.status), listed, lengths)

    def _inline(self, statuses: Collection[str]) -> sa.BindParameter[Any]:
        """Configured statuses written into the SQL text as quoted literals, not parameters:
        PostgreSQL then folds the list once, where a prepared statement's parameter list is
        rebuilt for every one of the table's rows.
        On PostgreSQL the list is padded to a hashed lookup's length by repeating its last
        entry (same meaning), which the planner then tests faster on every row."""
        listed = sorted(status_key(s) for s in statuses)
        if listed and not self.sql.reading.sqlite:
            listed += listed[-1:] * (_HASHED_LIST - len(listed))
        return sa.bindparam(None, listed, expanding=True, literal_execute=True)
