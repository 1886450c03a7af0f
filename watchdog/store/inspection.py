"""The application's table as the database describes it: does it exist, has it every
mapped column, and what types are they. A mapping mistake is a ConfigError naming the key
to fix (exit 2), found by `config check` and first thing by `run`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from watchdog.config import InstancesSettings
from watchdog.core.errors import ConfigError
from watchdog.store.readings import (
    TEXT_TYPES,
    FlagKind,
    Reading,
    TimeKind,
    flag_kind,
    time_kind,
)

_PG_COLUMNS = sa.text(
    "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull "
    "FROM pg_attribute a WHERE a.attrelid = to_regclass(:table) "
    "AND a.attnum > 0 AND NOT a.attisdropped"
)

Columns = Mapping[str, tuple[str, bool]]  # name → (declared type, NOT NULL)


async def columns(conn: Any, sqlite: bool, table: str) -> Columns:
    """The columns of `table` (empty when there is no such table)."""
    if not sqlite:  # quoted: a mixed-case name is as written, as in every query
        quoted = ".".join(f'"{part}"' for part in table.split("."))
        found = await conn.execute(_PG_COLUMNS, {"table": quoted})
        return {str(name): (str(kind), bool(required)) for name, kind, required in found}
    schema, _, name = table.rpartition(".")
    prefix = f'"{schema}".' if schema else ""
    found = await conn.execute(sa.text(f'PRAGMA {prefix}table_info("{name}")'))
    return {str(r[1]): (str(r[2]), bool(r[3])) for r in found}


def require(found: Columns, mapping: InstancesSettings) -> None:
    """Raise ConfigError naming the key of a missing table or column."""
    m = mapping
    if not found:
        raise ConfigError(
            f"config error: instances.table: the database has no table {m.table} (or this "
            "user cannot see it); fix [instances] table"
        )
    for key, column in m.columns().items():
        if column not in found:
            raise ConfigError(
                f"config error: instances.{key}: table {m.table} has no column {column}; "
                f"fix [instances] {key} (columns: {', '.join(sorted(found))})"
            )


def reading(found: Columns, mapping: InstancesSettings, sqlite: bool) -> Reading:
    """How the table's values are read: SQLite per value, PostgreSQL by column type."""
    m = mapping
    not_null = frozenset(name for name, (_type, required) in found.items() if required)
    if sqlite:
        per_value = TimeKind.PER_VALUE
        return Reading(
            True,
            per_value,
            per_value,
            FlagKind.PER_VALUE,
            m.timezone,
            m.epoch_unit,
            not_null,
            text_id=True,
        )
    return Reading(
        False,
        time_kind(found[m.status_changed_at][0], "status_changed_at", m.status_changed_at),
        time_kind(found[m.heartbeat][0], "heartbeat", m.heartbeat),
        flag_kind(found[m.enabled][0], m.enabled),
        m.timezone,
        m.epoch_unit,
        not_null,
        text_id=found[m.id][0].split("(")[0] in TEXT_TYPES,
    )
