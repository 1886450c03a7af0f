"""Breaker snapshots in `watchdog_breakers`, on an SQLite file and on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from watchdog.core.breaker import (
    BreakerBoard,
    BreakerRules,
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
    Transition,
)
from watchdog.core.errors import StoreError
from watchdog.store import migrate
from watchdog.store.breakers import SqlBreakerStore
from watchdog.store.database import Database
from watchdog.store.schema import breakers

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
RULES = BreakerRules()


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url, timeout=5.0)
    await migrate.upgrade(database)
    yield database
    await database.dispose()


def opened_breaker(name: str) -> CircuitBreaker:
    breaker = CircuitBreaker(name, RULES)
    breaker.record_success(T0)
    for i in range(5):
        breaker.record_failure(T0 + timedelta(seconds=i + 1), f"HTTP 503 #{i}")
    assert breaker.state is BreakerState.OPEN
    return breaker


async def test_an_empty_table_loads_nothing(db: Database) -> None:
    store = SqlBreakerStore(db)
    assert await store.load() == []
    await store.save([], T0)  # nothing to do, no error
    assert await store.load() == []


async def test_save_and_load_round_trip(db: Database) -> None:
    store = SqlBreakerStore(db)
    api = opened_breaker("api").snapshot()
    fresh = BreakerSnapshot("systemd")
    await store.save([api, fresh], T0)

    loaded = await store.load()

    assert loaded == [api, fresh]  # by name
    assert loaded[0].state is BreakerState.OPEN
    assert loaded[0].failure_rate == pytest.approx(5 / 6)
    assert loaded[0].last_error == "HTTP 503 #4"
    assert loaded[0].next_attempt_at == T0 + timedelta(seconds=65)


async def test_timestamps_come_back_aware_utc(db: Database) -> None:
    store = SqlBreakerStore(db)
    elsewhere = timezone(timedelta(hours=-5))
    local = T0.astimezone(elsewhere)
    snapshot = BreakerSnapshot(
        "api",
        BreakerState.OPEN,
        opened_at=local,
        last_failure_at=local,
        last_success_at=local - timedelta(minutes=1),
        next_attempt_at=local + timedelta(seconds=60),
    )
    await store.save([snapshot], local)

    (loaded,) = await store.load()

    stamps = [
        loaded.opened_at,
        loaded.last_failure_at,
        loaded.last_success_at,
        loaded.next_attempt_at,
    ]
    for stamp in stamps:
        assert stamp is not None
        assert stamp.utcoffset() == timedelta(0)
    assert loaded.opened_at == T0
    assert loaded.next_attempt_at == T0 + timedelta(seconds=60)
    async with db.connect("read updated_at") as conn:
        updated = (await conn.execute(sa.select(breakers.c.updated_at))).scalar_one()
    assert updated == T0
    assert updated.utcoffset() == timedelta(0)


async def test_saving_again_overwrites_only_the_saved_breakers(db: Database) -> None:
    store = SqlBreakerStore(db)
    breaker = opened_breaker("api")
    await store.save([breaker.snapshot(), BreakerSnapshot("db_flag", failures=2)], T0)

    later = T0 + timedelta(seconds=70)
    assert breaker.allow(later)
    breaker.record_success(later)
    assert breaker.record_success(later) is Transition.CLOSED
    await store.save([breaker.snapshot()], later)

    api, db_flag = await store.load()
    assert api == breaker.snapshot()
    assert api.state is BreakerState.CLOSED
    assert (api.opened_at, api.next_attempt_at) == (None, None)
    assert api.total == 8
    assert db_flag == BreakerSnapshot("db_flag", failures=2)
    async with db.connect("count rows") as conn:
        count = (await conn.execute(sa.select(sa.func.count()).select_from(breakers))).scalar()
    assert count == 2


async def test_a_board_restored_from_the_store_keeps_its_state(db: Database) -> None:
    store = SqlBreakerStore(db)
    board = BreakerBoard(RULES)
    for _ in range(4):
        board.get("supervisor").record_failure(T0, "unreachable")
    opened_breaker("api")  # not on the board: never saved
    dirty = board.dirty()
    await store.save(dirty, T0)
    board.mark_saved(dirty)
    assert board.dirty() == []

    restored = BreakerBoard(RULES)
    restored.load(await store.load())

    assert list(restored) == ["supervisor"]
    breaker = restored.get("supervisor")
    assert breaker.snapshot().failures == 4
    assert breaker.record_failure(T0 + timedelta(seconds=1), "unreachable") is Transition.OPENED


async def test_duplicate_names_in_one_save_are_refused(db: Database) -> None:
    store = SqlBreakerStore(db)
    with pytest.raises(ValueError, match="same breaker"):
        await store.save([BreakerSnapshot("api"), BreakerSnapshot("api")], T0)
    assert await store.load() == []


async def test_an_unknown_state_in_the_table_is_a_store_error(db: Database) -> None:
    await SqlBreakerStore(db).save([BreakerSnapshot("api")], T0)
    async with db.begin("corrupt a row") as conn:
        await conn.execute(sa.update(breakers).values(state="melted"))
    with pytest.raises(StoreError, match="unknown state 'melted'"):
        await SqlBreakerStore(db).load()
