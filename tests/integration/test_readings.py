"""Timestamps, flags and statuses as applications store them, on real SQLite files and a
real PostgreSQL: epoch seconds and milliseconds, naive local time in a configured zone,
ISO-8601 with and without an offset, text booleans, lower-case statuses, times ahead of
the database clock and garbage. Every row is judged, or reported as unjudgeable."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from watchdog.config import InstancesSettings
from watchdog.core.errors import ConfigError
from watchdog.core.model import Reason, Scan
from watchdog.core.policy import DetectionRules
from watchdog.store import migrate
from watchdog.store.database import Database
from watchdog.store.instances import SqlInstanceStore
from watchdog.store.readings import FlagKind, TimeKind

RULES = DetectionRules()
STALE = Reason.STALE_HEARTBEAT


def ago(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


def iso_z(seconds: float) -> str:
    return ago(seconds).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def local(seconds: float, zone: str) -> str:
    """A naive wall-clock time in `zone`, `seconds` ago."""
    return ago(seconds).astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S.%f")


@pytest.fixture
async def sqlite_db(sqlite_url: str) -> AsyncIterator[Database]:
    db = Database(sqlite_url, 5.0)
    await migrate.upgrade(db)
    yield db
    await db.dispose()


@pytest.fixture
async def pg_db(pg_url: str) -> AsyncIterator[Database]:
    db = Database(pg_url, 5.0)
    await migrate.upgrade(db)
    yield db
    await db.dispose()


def make_table(url: str, types: dict[str, str], rows: Sequence[dict[str, Any]]) -> None:
    """The instances table with these column types (no constraints) and rows; on SQLite
    the time and flag columns have no declared type, so each value keeps its own."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    loose = "" if url.startswith("sqlite") else None
    columns = {
        "id": "TEXT",
        "enabled": "BOOLEAN" if loose is None else loose,
        "connection_status": "TEXT",
        "status_changed_at": "TEXT" if loose is None else loose,
        "last_heartbeat_at": "TEXT" if loose is None else loose,
        "force_reconnect": "BOOLEAN",
        "process": "TEXT",
        **types,
    }
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"CREATE TABLE instances ({', '.join(f'{c} {t}' for c, t in columns.items())})")
        )
        for row in rows:
            values = {"enabled": True, "connection_status": "CONNECTED", **row}
            names = ", ".join(values)
            conn.execute(
                sa.text(
                    f"INSERT INTO instances ({names}) VALUES ({', '.join(':' + n for n in values)})"
                ),
                values,
            )
    engine.dispose()


async def scan(db: Database, mapping: InstancesSettings | None = None) -> tuple[Scan, Any]:
    store = SqlInstanceStore(db, mapping or InstancesSettings(), RULES)
    reading = await store.check()
    return await store.scan(), reading


def unjudgeable(result: Scan) -> dict[str | None, str]:
    return {u.instance_id: u.column for u in result.unjudgeable}


# ----------------------------------------------------------------------------- SQLite


@pytest.mark.parametrize("unit", ["s", "ms"])
async def test_sqlite_epoch_numbers_in_the_configured_unit(
    sqlite_url: str, sqlite_db: Database, unit: str
) -> None:
    scale = 1000 if unit == "ms" else 1

    def epoch(seconds: float) -> int:
        return int(ago(seconds).timestamp() * scale)

    make_table(
        sqlite_url,
        {},
        [
            {"id": "fresh", "status_changed_at": epoch(1000), "last_heartbeat_at": epoch(5)},
            {"id": "stale", "status_changed_at": epoch(1000), "last_heartbeat_at": epoch(300)},
            {"id": "real", "status_changed_at": epoch(1000), "last_heartbeat_at": epoch(300) + 0.5},
            {"id": "julian", "status_changed_at": epoch(1000), "last_heartbeat_at": 2460000.5},
        ],
    )
    result, _ = await scan(sqlite_db, InstancesSettings(epoch_unit=unit))  # type: ignore[arg-type]
    assert {i: f.reason for i, f in result.findings.items()} == {"stale": STALE, "real": STALE}
    assert unjudgeable(result) == {"julian": "last_heartbeat_at"}  # not a plausible epoch
    assert result.enabled_count == 4


async def test_sqlite_iso_text_with_and_without_offset_and_times_ahead(
    sqlite_url: str, sqlite_db: Database
) -> None:
    berlin = ago(5).astimezone(ZoneInfo("Europe/Berlin")).isoformat()  # with +01:00/+02:00
    make_table(
        sqlite_url,
        {},
        [
            {"id": "z-stale", "status_changed_at": iso_z(1000), "last_heartbeat_at": iso_z(300)},
            {"id": "offset-fresh", "status_changed_at": iso_z(1000), "last_heartbeat_at": berlin},
            {"id": "ahead", "status_changed_at": iso_z(1000), "last_heartbeat_at": iso_z(-120)},
            {"id": "garbage", "status_changed_at": "tuesday", "last_heartbeat_at": iso_z(300)},
        ],
    )
    result, reading = await scan(sqlite_db)
    assert list(result.findings) == ["z-stale"]
    assert unjudgeable(result) == {"ahead": "last_heartbeat_at", "garbage": "status_changed_at"}
    (ahead,) = [u for u in result.unjudgeable if u.instance_id == "ahead"]
    assert "ahead of the database clock" in ahead.why
    assert reading.changed is TimeKind.PER_VALUE


@pytest.mark.parametrize("zone", ["America/New_York", "Europe/Berlin", "Asia/Kolkata"])
async def test_sqlite_naive_local_time_in_the_configured_zone(
    sqlite_url: str, sqlite_db: Database, zone: str
) -> None:
    make_table(
        sqlite_url,
        {},
        [
            {
                "id": "fresh",
                "status_changed_at": local(1000, zone),
                "last_heartbeat_at": local(5, zone),
            },
            {
                "id": "stale",
                "status_changed_at": local(1000, zone),
                "last_heartbeat_at": local(300, zone),
            },
            {"id": "utc-z", "status_changed_at": iso_z(1000), "last_heartbeat_at": iso_z(5)},
        ],
    )
    result, _ = await scan(sqlite_db, InstancesSettings(timezone=zone))
    assert list(result.findings) == ["stale"]
    assert abs(result.findings["stale"].age - 300) < 5
    assert unjudgeable(result) == {}
    unconfigured, _ = await scan(sqlite_db)  # read as UTC: hours off one way or the other
    assert "fresh" in {*unconfigured.findings, *unjudgeable(unconfigured)}


async def test_sqlite_text_flags_and_lower_case_statuses(
    sqlite_url: str, sqlite_db: Database
) -> None:
    old, stale = iso_z(1000), iso_z(300)
    make_table(
        sqlite_url,
        {},
        [
            {"id": "yes", "enabled": "Yes", "status_changed_at": old, "last_heartbeat_at": stale},
            {"id": "one", "enabled": 1, "status_changed_at": old, "last_heartbeat_at": stale},
            {"id": "off", "enabled": "false", "status_changed_at": old, "last_heartbeat_at": stale},
            {"id": "zero", "enabled": "0", "status_changed_at": old, "last_heartbeat_at": stale},
            {
                "id": "maybe",
                "enabled": "maybe",
                "status_changed_at": old,
                "last_heartbeat_at": stale,
            },
            {
                "id": "stuck",
                "connection_status": "connecting",
                "status_changed_at": iso_z(300),
                "last_heartbeat_at": iso_z(1),
            },
            {
                "id": "banned",
                "connection_status": "banned",
                "status_changed_at": old,
                "last_heartbeat_at": stale,
            },
        ],
    )
    result, _ = await scan(sqlite_db)
    reasons = {i: f.reason for i, f in result.findings.items()}
    assert reasons == {"yes": STALE, "one": STALE, "stuck": Reason.STUCK_CONNECTING}
    assert unjudgeable(result) == {"maybe": "enabled"}
    assert result.enabled_count == 3  # yes, one, stuck


# ------------------------------------------------------------------------- PostgreSQL


async def test_postgres_naive_timestamps_in_the_configured_zone(
    pg_url: str, pg_db: Database
) -> None:
    zone = "Europe/Berlin"
    make_table(
        pg_url,
        {"status_changed_at": "timestamp", "last_heartbeat_at": "timestamp"},
        [
            {
                "id": "fresh",
                "status_changed_at": local(1000, zone),
                "last_heartbeat_at": local(5, zone),
            },
            {
                "id": "stale",
                "status_changed_at": local(1000, zone),
                "last_heartbeat_at": local(300, zone),
            },
            {
                "id": "ahead",
                "status_changed_at": local(1000, zone),
                "last_heartbeat_at": local(-600, zone),
            },
        ],
    )
    result, reading = await scan(pg_db, InstancesSettings(timezone=zone))
    assert reading.heartbeat is TimeKind.NAIVE
    assert list(result.findings) == ["stale"]
    assert abs(result.findings["stale"].age - 300) < 5
    assert unjudgeable(result) == {"ahead": "last_heartbeat_at"}


async def test_postgres_epoch_milliseconds_and_integer_flags(pg_url: str, pg_db: Database) -> None:
    def ms(seconds: float) -> int:
        return int(ago(seconds).timestamp() * 1000)

    make_table(
        pg_url,
        {"status_changed_at": "bigint", "last_heartbeat_at": "bigint", "enabled": "integer"},
        [
            {
                "id": "fresh",
                "enabled": 1,
                "status_changed_at": ms(1000),
                "last_heartbeat_at": ms(5),
            },
            {
                "id": "stale",
                "enabled": 1,
                "status_changed_at": ms(1000),
                "last_heartbeat_at": ms(300),
            },
            {
                "id": "off",
                "enabled": 0,
                "status_changed_at": ms(1000),
                "last_heartbeat_at": ms(300),
            },
            {
                "id": "seconds",
                "enabled": 1,
                "status_changed_at": ms(1000),
                "last_heartbeat_at": ms(300) // 1000,
            },
        ],
    )
    result, reading = await scan(pg_db, InstancesSettings(epoch_unit="ms"))
    assert (reading.heartbeat, reading.enabled) == (TimeKind.EPOCH, FlagKind.NUMBER)
    assert list(result.findings) == ["stale"]
    assert unjudgeable(result) == {"seconds": "last_heartbeat_at"}  # 1970 in milliseconds
    assert result.enabled_count == 3


async def test_postgres_text_times_text_flags_and_statuses(pg_url: str, pg_db: Database) -> None:
    old = iso_z(1000)
    make_table(
        pg_url,
        {"enabled": "text"},
        [
            {
                "id": "z-stale",
                "enabled": "TRUE",
                "status_changed_at": old,
                "last_heartbeat_at": iso_z(300),
            },
            {
                "id": "naive-fresh",
                "enabled": "t",
                "status_changed_at": old,
                "last_heartbeat_at": local(5, "UTC"),
            },
            {"id": "word", "enabled": "yes", "status_changed_at": old, "last_heartbeat_at": "now"},
            {
                "id": "feb30",
                "enabled": "yes",
                "status_changed_at": old,
                "last_heartbeat_at": "2024-02-30 10:00:00",
            },
            {
                "id": "no",
                "enabled": "no",
                "status_changed_at": old,
                "last_heartbeat_at": iso_z(300),
            },
            {
                "id": "null-flag",
                "enabled": None,
                "status_changed_at": old,
                "last_heartbeat_at": iso_z(300),
            },
            {
                "id": "stuck",
                "enabled": "1",
                "connection_status": "Reconnecting",
                "status_changed_at": iso_z(300),
                "last_heartbeat_at": iso_z(1),
            },
        ],
    )
    result, reading = await scan(pg_db)
    assert (reading.heartbeat, reading.enabled) == (TimeKind.TEXT, FlagKind.TEXT)
    reasons = {i: f.reason for i, f in result.findings.items()}
    assert reasons == {"z-stale": STALE, "stuck": Reason.STUCK_CONNECTING}
    assert unjudgeable(result) == {
        "word": "last_heartbeat_at",  # 'now' is no heartbeat
        "feb30": "last_heartbeat_at",
        "null-flag": "enabled",
    }


async def test_postgres_a_column_type_it_cannot_read_names_the_key(
    pg_url: str, pg_db: Database
) -> None:
    make_table(pg_url, {"last_heartbeat_at": "date"}, [])
    with pytest.raises(
        ConfigError,
        match=r"^config error: instances.heartbeat: column last_heartbeat_at has type date",
    ):
        await scan(pg_db)


async def test_the_reading_in_use_is_described(sqlite_db: Database, sqlite_url: str) -> None:
    make_table(sqlite_url, {}, [])
    store = SqlInstanceStore(sqlite_db, InstancesSettings(timezone="Europe/Berlin"), RULES)
    described = (await store.check()).describe(InstancesSettings())
    assert "Europe/Berlin" in described["last_heartbeat_at"]
    assert "seconds" in described["last_heartbeat_at"]


async def test_the_census_counts_every_row_once(sqlite_url: str, sqlite_db: Database) -> None:
    old, fresh, stale = iso_z(1000), iso_z(1), iso_z(300)
    make_table(
        sqlite_url,
        {},
        [
            {"id": "ok", "status_changed_at": old, "last_heartbeat_at": fresh},
            {"id": "stale", "status_changed_at": old, "last_heartbeat_at": stale},
            {
                "id": "maybe",
                "enabled": "maybe",
                "status_changed_at": old,
                "last_heartbeat_at": fresh,
            },
            {
                "id": "no-status",
                "connection_status": None,
                "status_changed_at": old,
                "last_heartbeat_at": fresh,
            },
            {"id": "garbage", "status_changed_at": "soon", "last_heartbeat_at": fresh},
            {"id": "off", "enabled": False, "status_changed_at": old, "last_heartbeat_at": stale},
            {
                "id": "banned",
                "connection_status": "BANNED",
                "status_changed_at": old,
                "last_heartbeat_at": stale,
            },
            {
                "id": "maybe-banned",
                "enabled": "?",
                "connection_status": "BANNED",
                "status_changed_at": old,
                "last_heartbeat_at": stale,
            },
        ],
    )
    store = SqlInstanceStore(sqlite_db, InstancesSettings(), RULES)
    await store.check()
    census = await store.census(await store.scan())
    assert (census.healthy, census.unhealthy, census.unjudgeable) == (1, 1, 3)
    assert (census.disabled, census.ignored, census.monitored) == (1, 2, 3)
    parts = (
        census.healthy + census.unhealthy + census.unjudgeable + census.disabled + census.ignored
    )
    assert parts == census.rows == 8


async def test_postgres_a_mixed_case_schema_and_table(pg_url: str, pg_db: Database) -> None:
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text('CREATE SCHEMA "Ops"'))
        conn.execute(
            sa.text(
                'CREATE TABLE "Ops"."Sessions" (id TEXT PRIMARY KEY, enabled BOOLEAN, '
                "connection_status TEXT, status_changed_at timestamptz, last_heartbeat_at "
                "timestamptz, force_reconnect BOOLEAN, process TEXT)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO \"Ops\".\"Sessions\" VALUES ('s1', true, 'CONNECTED', "
                "now() - interval '1 hour', now() - interval '5 minutes', false, NULL)"
            )
        )
    engine.dispose()
    result, reading = await scan(pg_db, InstancesSettings(table="Ops.Sessions"))
    assert reading.heartbeat is TimeKind.ZONED
    assert list(result.findings) == ["s1"]
