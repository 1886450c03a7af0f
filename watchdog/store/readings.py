"""How the application's values are read: its timestamps, its `enabled` flag and its
status, as SQL expressions for the detection query. Every expression is NULL where the
value cannot be read, so a bad value is that row's problem, never the statement's.

PostgreSQL: the column types, read at start (`inspect`), decide:

* `timestamptz`: as stored; `timestamp` without time zone: in `[instances] timezone`;
* an integer or numeric column: Unix epoch in `[instances] epoch_unit`;
* text: parsed per value by `watchdog_timestamptz` (migration 0006): ISO-8601 or
  PostgreSQL's own format, with or without an offset; NULL when it is not a time.

SQLite, per value: text (SQLite's own format or ISO-8601, with `Z` or `±HH:MM` or
without, then in `[instances] timezone`) or an epoch number. A naive value in a zone other
than UTC is shifted by that zone's offset at the time of the query (SQLite has no zone
database): around a daylight-saving change a naive value written before it is an hour
off, so store UTC or an offset.

Epoch numbers before 2000 are taken for a mistake (a wrong `epoch_unit`, Julian days),
never for a very old time. `enabled` is true for a boolean true, a non-zero number or the
text true/t/yes/y/on/1 in any case, false for false/f/no/n/off/0, unreadable otherwise;
statuses compare case-insensitively.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from watchdog.config import InstancesSettings
from watchdog.core.errors import ConfigError

TRUE_WORDS = ("1", "on", "t", "true", "y", "yes")
FALSE_WORDS = ("0", "f", "false", "n", "no", "off")
_EPOCH_FLOOR = 946_684_800  # 2000-01-01T00:00:00Z in Unix seconds
_EPOCH_DIVISOR = {"s": 1.0, "ms": 1000.0}
# PostgreSQL type names (format_type) by how their values are read.
_ZONED = ("timestamp with time zone",)
_NAIVE = ("timestamp without time zone",)
_NUMBERS = ("smallint", "integer", "bigint", "real", "double precision")
TEXT_TYPES = ("text", "character varying", "character", "name")


class TimeKind(enum.StrEnum):
    ZONED = "timestamptz"
    NAIVE = "timestamp without time zone"
    EPOCH = "epoch number"
    TEXT = "text"
    PER_VALUE = "per value: text or epoch number"  # SQLite


class FlagKind(enum.StrEnum):
    BOOLEAN = "boolean"
    NUMBER = "number"
    TEXT = "text"
    PER_VALUE = "per value: number or text"  # SQLite


@dataclass(frozen=True, slots=True)
class Reading:
    """How one application table is read. `not_null`: the mapped columns (their names)
    the table declares NOT NULL, whose NULL tests the query can leave out."""

    sqlite: bool
    changed: TimeKind
    heartbeat: TimeKind
    enabled: FlagKind
    timezone: str = "UTC"
    epoch_unit: str = "s"
    not_null: frozenset[str] = field(default_factory=frozenset)
    text_id: bool | None = None  # the id column holds text (None: not known yet)

    @classmethod
    def assumed(cls, sqlite: bool, mapping: InstancesSettings) -> Reading:
        """Before the table was inspected: SQLite per value, PostgreSQL as documented."""
        if sqlite:
            time, flag = TimeKind.PER_VALUE, FlagKind.PER_VALUE
        else:
            time, flag = TimeKind.ZONED, FlagKind.BOOLEAN
        text_id = True if sqlite else None
        return cls(sqlite, time, time, flag, mapping.timezone, mapping.epoch_unit, text_id=text_id)

    @property
    def utc(self) -> bool:
        return self.timezone == "UTC"

    def describe(self, mapping: InstancesSettings) -> dict[str, str]:
        """Column → how its values are read, for `config check` and `explain`."""
        zone = f" (naive values in {self.timezone})"
        unit = f" (epoch in {'seconds' if self.epoch_unit == 's' else 'milliseconds'})"

        def time(kind: TimeKind) -> str:
            extra = ""
            if kind in (TimeKind.NAIVE, TimeKind.TEXT, TimeKind.PER_VALUE):
                extra += zone
            if kind in (TimeKind.EPOCH, TimeKind.PER_VALUE):
                extra += unit
            return f"{kind}{extra}"

        return {
            mapping.status_changed_at: time(self.changed),
            mapping.heartbeat: time(self.heartbeat),
            mapping.enabled: str(self.enabled),
            mapping.status: "text, compared case-insensitively",
        }


def time_kind(type_name: str, key: str, column: str) -> TimeKind:
    """How a PostgreSQL column of this type is read as a time; a clear error otherwise."""
    base = type_name.split("(")[0].strip()
    if base in _ZONED:
        return TimeKind.ZONED
    if base in _NAIVE:
        return TimeKind.NAIVE
    if base in _NUMBERS or base == "numeric":
        return TimeKind.EPOCH
    if base in TEXT_TYPES:
        return TimeKind.TEXT
    raise ConfigError(
        f"config error: instances.{key}: column {column} has type {type_name}; the watchdog "
        "reads timestamptz, timestamp, an epoch number or text there"
    )


def flag_kind(type_name: str, column: str) -> FlagKind:
    base = type_name.split("(")[0].strip()
    if base == "boolean":
        return FlagKind.BOOLEAN
    if base in _NUMBERS or base == "numeric":
        return FlagKind.NUMBER
    if base in TEXT_TYPES:
        return FlagKind.TEXT
    raise ConfigError(
        f"config error: instances.enabled: column {column} has type {type_name}; the "
        "watchdog reads a boolean, a number or text (true/false, yes/no, 1/0) there"
    )


def naive_shift(timezone: str, now: datetime) -> str:
    """The SQLite date modifier that turns a naive local time in `timezone` into UTC."""
    offset = now.astimezone(ZoneInfo(timezone)).utcoffset()
    minutes = 0 if offset is None else -int(offset.total_seconds() // 60)
    return f"{minutes:+d} minutes"


class ReadingSql:
    """The SQL expressions of one `Reading`. Ages are seconds before the database's now.

    The detection query tests every row of the table, so each test is written to cost as
    little as possible per row: the stored value is compared with a cut-off computed once
    per statement (no arithmetic on the value; an index on the column can serve it), one
    test covers NULL, unreadable and too far ahead at once, and a per-row function (a
    status's case, a flag's text) runs only for the rare values that need it."""

    def __init__(self, reading: Reading) -> None:
        self.reading = reading
        self._divisor = _EPOCH_DIVISOR[reading.epoch_unit]

    # ----------------------------------------------------------------- times

    def older_than(
        self, column: sa.ColumnElement[Any], kind: TimeKind, seconds: float
    ) -> sa.ColumnElement[bool]:
        """`column` lies more than `seconds` before now (NULL when unreadable)."""
        return self._stored(column, kind) < self._cutoff(kind, -seconds)

    def outside(
        self, column: sa.ColumnElement[Any], kind: TimeKind, older: float, ahead: float
    ) -> sa.ColumnElement[bool]:
        """A value is there and it is more than `older` seconds before now, more than
        `ahead` seconds after it, or not a time at all."""
        if self._always_readable(kind):  # two range tests an index can serve
            return sa.or_(column < self._cutoff(kind, -older), column > self._cutoff(kind, ahead))
        value = self._stored(column, kind)
        window = value.between(self._cutoff(kind, -older), self._cutoff(kind, ahead))
        inside = sa.func.coalesce(window, sa.false()) == sa.true()
        return sa.and_(column.is_not(None), sa.not_(inside))

    def unsure(
        self, column: sa.ColumnElement[Any], kind: TimeKind, ahead: float, *, nullable: bool
    ) -> sa.ColumnElement[bool]:
        """The value is NULL, not a time, or more than `ahead` seconds after now."""
        if self._always_readable(kind):
            later = column > self._cutoff(kind, ahead)
            return sa.or_(column.is_(None), later) if nullable else later
        believed = self._stored(column, kind) <= self._cutoff(kind, ahead)
        return sa.not_(sa.func.coalesce(believed, sa.false()) == sa.true())

    def age(self, column: sa.ColumnElement[Any], kind: TimeKind) -> sa.ColumnElement[Any]:
        """Seconds between `column` and now (NULL when unreadable)."""
        if self.reading.sqlite:
            days = sa.func.julianday("now") - self._julian(column)
            return sa.cast(days * 86400.0, sa.Float)
        if kind is TimeKind.EPOCH:  # arithmetic only: to_timestamp() of a huge value fails
            now = sa.extract("epoch", sa.func.now())
            return sa.cast(now - sa.cast(column, sa.Float) / self._divisor, sa.Float)
        return sa.cast(sa.extract("epoch", sa.func.now() - self._instant(column, kind)), sa.Float)

    def unreadable(
        self, column: sa.ColumnElement[Any], kind: TimeKind
    ) -> sa.ColumnElement[bool] | None:
        """A value there that is not a time (None: every stored value is one)."""
        if self.reading.sqlite:
            return sa.and_(column.is_not(None), self._julian(column).is_(None))
        if kind is TimeKind.EPOCH:
            return column < _EPOCH_FLOOR * self._divisor
        if kind is TimeKind.TEXT:
            return sa.and_(column.is_not(None), self._instant(column, kind).is_(None))
        return None

    def raw_if_unreadable(
        self, column: sa.ColumnElement[Any], kind: TimeKind
    ) -> sa.ColumnElement[Any]:
        """The stored value as text where it is there but not a time; else NULL."""
        bad = self.unreadable(column, kind)
        if bad is None:
            return sa.null()
        return sa.case((bad, self.text(column)))

    def _always_readable(self, kind: TimeKind) -> bool:
        """Every value of the column is a time (PostgreSQL's own timestamp types)."""
        return not self.reading.sqlite and kind in (TimeKind.ZONED, TimeKind.NAIVE)

    def _stored(self, column: sa.ColumnElement[Any], kind: TimeKind) -> sa.ColumnElement[Any]:
        """The value in the form the cut-offs of `kind` are in (NULL when unreadable)."""
        if self.reading.sqlite:
            return self._julian(column)
        if kind is TimeKind.EPOCH:
            floor = _EPOCH_FLOOR * self._divisor
            return sa.case((column >= floor, column))  # before 2000: a mistake, not a time
        if kind is TimeKind.TEXT:
            return self._instant(column, kind)
        return column

    def _cutoff(self, kind: TimeKind, offset: float) -> sa.ColumnElement[Any]:
        """Now plus `offset` seconds, in the form `_stored` gives; on PostgreSQL computed
        once per statement (a scalar subquery), not for every row."""
        if self.reading.sqlite:
            return sa.func.julianday("now") + offset / 86400.0
        moment: sa.ColumnElement[Any] = sa.func.now() + _interval(offset)
        if kind is TimeKind.NAIVE:
            moment = sa.func.timezone(self.reading.timezone, moment)
        elif kind is TimeKind.EPOCH:
            moment = (sa.extract("epoch", sa.func.now()) + offset) * self._divisor
        return sa.select(moment).scalar_subquery()

    def _instant(self, column: sa.ColumnElement[Any], kind: TimeKind) -> sa.ColumnElement[Any]:
        """PostgreSQL: a timestamp or text value as a timestamptz (epoch numbers are only
        ever compared and subtracted as numbers: to_timestamp() of a huge one fails)."""
        zone = self.reading.timezone
        if kind is TimeKind.ZONED:
            return column
        if kind is TimeKind.NAIVE:
            return sa.func.timezone(zone, column)
        return sa.func.watchdog_timestamptz(sa.cast(column, sa.Text), zone)

    def _julian(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """SQLite: the value as a Julian day, whatever its storage class."""
        as_text: sa.ColumnElement[Any]
        if self.reading.utc:
            as_text = sa.func.julianday(column)
        else:
            zoned = sa.or_(
                column.op("GLOB")("*[Zz]"), column.op("GLOB")("*[+-][0-9][0-9]:[0-9][0-9]")
            )
            shift = sa.bindparam("naive_shift", type_=sa.Text)
            as_text = sa.case(
                (zoned, sa.func.julianday(column)), else_=sa.func.julianday(column, shift)
            )
        seconds = column / self._divisor
        as_epoch = sa.case(
            (seconds >= _EPOCH_FLOOR, sa.func.julianday(seconds, "unixepoch")),
        )
        storage = sa.func.typeof(column)
        return sa.case(
            (storage == "text", as_text),
            (storage.in_(("integer", "real")), as_epoch),
        )

    # ---------------------------------------------------------- flag, status

    def enabled(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """True, false, or NULL when the value cannot be read."""
        kind = self.reading.enabled
        if kind is FlagKind.BOOLEAN:
            return column
        if kind is FlagKind.NUMBER:
            return column != 0
        word = sa.func.lower(sa.func.trim(sa.cast(column, sa.Text)))
        from_text = sa.case((word.in_(TRUE_WORDS), sa.true()), (word.in_(FALSE_WORDS), sa.false()))
        if kind is FlagKind.TEXT:
            return from_text
        storage = sa.func.typeof(column)
        return sa.case(
            (column.in_((0, 1)), column),  # the common case first: no function call
            (storage.in_(("integer", "real")), column != 0),
            (storage == "text", from_text),
        )

    def enabled_unreadable(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
        """`enabled` is neither true nor false; the usual values pass without a function."""
        kind = self.reading.enabled
        if kind in (FlagKind.BOOLEAN, FlagKind.NUMBER):
            return column.is_(None)
        usual = (0, 1) if kind is FlagKind.PER_VALUE else (*TRUE_WORDS, *FALSE_WORDS)
        return sa.and_(
            sa.func.coalesce(column.in_(usual), sa.false()) == sa.false(),
            self.enabled(column).is_(None),
        )

    def status_in(
        self, column: sa.ColumnElement[Any], listed: sa.BindParameter[Any], lengths: list[int]
    ) -> sa.ColumnElement[bool]:
        """The status is one of `listed` (upper-case), in any case of its ASCII letters. On
        PostgreSQL the byte length, free to read, rules out most rows before any case is
        changed: upper() in the C collation keeps the length."""
        key = self.status(column)
        if self.reading.sqlite or not lengths:
            return key.in_(listed)
        size = sa.func.octet_length(sa.cast(column, sa.Text))
        return sa.and_(size.in_(lengths), key.in_(listed))

    def status(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """The status as text with its ASCII letters upper-case (an enum or a number reads
        as its text); SQLite's upper() changes only ASCII letters too."""
        if self.reading.sqlite:
            return sa.func.upper(column)
        return sa.func.upper(sa.collate(sa.cast(column, sa.Text), "C"))

    def text(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """Any value as text for the JSON aggregate; on SQLite a BLOB as a one-element JSON
        array of its hex (a BLOB itself would fail the statement, and one that is not
        UTF-8 would fail it as text)."""
        if not self.reading.sqlite:
            return sa.cast(column, sa.Text)
        return sa.case(
            (sa.func.typeof(column) == "blob", sa.func.json_array(sa.func.hex(column))),
            else_=sa.cast(column, sa.Text),
        )

    def params(self, now: datetime) -> Mapping[str, Any]:
        """Values the statements take at execution (the zone's offset moves with DST)."""
        if self.reading.sqlite and not self.reading.utc:
            return {"naive_shift": naive_shift(self.reading.timezone, now)}
        return {}


def _interval(seconds: float) -> sa.ColumnElement[Any]:
    return sa.literal_column(f"interval '{seconds:.6f} seconds'")
