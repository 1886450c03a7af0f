"""Leadership on real databases: real leader locks (a file lock on SQLite, an advisory
lock on PostgreSQL), the real node rows, audit trail and alert feeder. Failures are
real ones too: a trigger makes the database refuse one write."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from watchdog.alerts import AlertFeeder
from watchdog.config import SinkSettings
from watchdog.core.errors import StoreError
from watchdog.core.model import AuditAction, AuditRow
from watchdog.core.ports import AuditQuery
from watchdog.daemon.leadership import LeaderLock, Leadership, NodeIdentity
from watchdog.daemon.loop import CycleRunner
from watchdog.store import migrate
from watchdog.store.database import Database
from watchdog.store.ledger import SqlLedger
from watchdog.store.locks import PgAdvisoryLock, SqliteFileLock
from watchdog.store.nodes import Node, SqlNodes

LOCK_KEY = 7_414_141


class Fleet:
    """Nodes on one database, as `watchdogctl run` starts them; all stopped at the end."""

    def __init__(self, db: Database, url: str) -> None:
        self.db = db
        self.url = url
        self._started: list[Leadership] = []

    async def node(
        self, pid: int, on_lead: OnLead | None = None, lock: LeaderLock | None = None
    ) -> Leadership:
        """A registered standby."""
        me = NodeIdentity(f"host:{pid}", "host", pid)
        nodes = SqlNodes(self.db)
        started = datetime.now(UTC)  # register stamps the database's clock instead
        await nodes.register(Node(me.node_id, me.host, me.pid, "standby", "test", started))
        lead = Leadership(lock or self.lock(), nodes, SqlLedger(self.db), me, on_lead)
        self._started.append(lead)
        return lead

    def lock(self) -> LeaderLock:
        if self.db.is_sqlite:
            return SqliteFileLock(Path(self.url.removeprefix("sqlite:///")))
        return PgAdvisoryLock(self.url, LOCK_KEY, 5.0)

    async def close(self) -> None:
        for lead in self._started:
            await lead.stop()
        await self.db.dispose()


async def open_fleet(url: str) -> Fleet:
    db = Database(url, timeout=5.0)
    await migrate.upgrade(db)
    return Fleet(db, url)


@pytest.fixture
async def fleet(db_url: str) -> AsyncIterator[Fleet]:
    opened = await open_fleet(db_url)
    yield opened
    await opened.close()


@pytest.fixture
async def sqlite_fleet(sqlite_url: str) -> AsyncIterator[Fleet]:
    opened = await open_fleet(sqlite_url)
    yield opened
    await opened.close()


@pytest.fixture
async def pg_fleet(pg_url: str) -> AsyncIterator[Fleet]:
    opened = await open_fleet(pg_url)
    yield opened
    await opened.close()


class OnLead:
    """Counts the completed runs of `on_lead`; refuses the first `failures` of them."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.runs = 0

    async def __call__(self) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreError("database unavailable (breakers load, test)")
        self.runs += 1


async def wins(lead: Leadership, timeout: float = 10.0) -> bool:
    """`ensure()` as a standby calls it, once a cycle, until it leads (bounded): a closed
    lock session ends on the server a moment after the client let go of it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await lead.ensure():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def rows_of(db: Database) -> dict[str, Node]:
    return {n.node_id: n for n in await SqlNodes(db).all()}


async def leads(db: Database) -> list[AuditRow]:
    query = AuditQuery(actions=[AuditAction.LEADER_CHANGED])
    return await SqlLedger(db).audit(query)


async def execute(db: Database, sql: str) -> None:
    async with db.begin("test") as conn:
        await conn.execute(sa.text(sql))


# ------------------------------------------------------------- a failed take of the lead

REFUSE = {
    "audit": "BEFORE INSERT ON watchdog_audit WHEN NEW.action = 'leader_changed'",
    "node": "BEFORE UPDATE ON watchdog_nodes WHEN NEW.role = 'leader'",
}


@pytest.mark.parametrize("refused", ["audit", "node", "on_lead"])
async def test_a_lead_whose_writes_fail_is_not_taken_and_the_next_try_redoes_them_all(
    sqlite_fleet: Fleet, refused: str
) -> None:
    """The lock is won but a write of taking the lead (or `on_lead`) fails: this node
    does not lead, and the next `ensure()` takes the lead in full, `on_lead` included."""
    db = sqlite_fleet.db
    on_lead = OnLead(failures=1 if refused == "on_lead" else 0)
    lead = await sqlite_fleet.node(1, on_lead)
    if refused in REFUSE:
        trigger = f"CREATE TRIGGER refuse {REFUSE[refused]} BEGIN SELECT RAISE(ABORT, 'no'); END"
        await execute(db, trigger)
    with pytest.raises(StoreError):
        await lead.ensure()
    assert lead.is_leader is False
    assert await lead.fence() is False
    assert on_lead.runs == 0
    await execute(db, "DROP TRIGGER IF EXISTS refuse")

    assert await lead.ensure() is True
    assert on_lead.runs == 1  # interrupted outcomes written, breakers loaded
    assert await lead.fence() is True
    assert (await rows_of(db))["host:1"].role == "leader"
    assert await leads(db)


# ------------------------------------------------------------------------- standbys


class NoCycles:
    """The engine of a standby: it must never run a cycle."""

    async def run_cycle(self) -> None:
        raise AssertionError("a standby ran a cycle")


async def test_a_standby_refreshes_its_row_but_never_claims_a_good_cycle(
    pg_fleet: Fleet,
) -> None:
    leader = await pg_fleet.node(1)
    standby = await pg_fleet.node(2)
    assert await leader.ensure()
    registered = (await rows_of(pg_fleet.db))["host:2"].updated_at
    runner = CycleRunner(NoCycles(), leadership=standby)  # type: ignore[arg-type]

    assert await runner.tick()  # a healthy standby's tick
    assert await runner.tick()

    row = (await rows_of(pg_fleet.db))["host:2"]
    assert row.role == "standby"
    assert row.updated_at is not None
    assert registered is not None
    assert row.updated_at > registered  # alive, as `status` shows it
    assert row.last_good_cycle_at is None  # it completed no cycle


# ------------------------------------------------------ the first lead and a takeover


async def alerts_for_new_rows(db: Database) -> AlertFeeder:
    sinks = [SinkSettings(name="ops", url="http://127.0.0.1:9/hook")]
    feeder = AlertFeeder(db, sinks, settle=0.0)
    assert await feeder.feed() == 0  # places the cursor: rows from now on are alerted
    return feeder


@pytest.mark.parametrize("ended", ["stopped", "killed"])
async def test_a_lone_daemon_taking_the_lead_is_audited_but_is_no_leader_change(
    fleet: Fleet, ended: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Its first start, and a restart after a clean stop or a kill -9 (its row still
    says `leader`): no other node led since this one started."""
    feeder = await alerts_for_new_rows(fleet.db)
    caplog.set_level(logging.INFO, logger="watchdog.daemon.leadership")
    lock = fleet.lock()
    before = await fleet.node(1, lock=lock)
    assert await before.ensure()
    await before.good_cycle()
    await (before.stop() if ended == "stopped" else lock.release())
    mine = fleet.lock()
    after = await fleet.node(2, lock=mine)
    assert await wins(after)
    await after.good_cycle()
    await mine.release()  # this one loses its lock and wins it back: still no change
    assert await after.ensure() is False
    assert await wins(after)

    rows = await leads(fleet.db)
    assert [r.detail["node"] for r in rows] == ["host:1", "host:2", "host:2"]
    assert [r.detail.get("first") for r in rows] == [True, True, True]
    assert await feeder.feed() == 0  # no leader_changed alert
    levels = {r.levelname for r in caplog.records if r.name == "watchdog.daemon.leadership"}
    assert levels == {"INFO", "ERROR"}  # the lead taken; the lock lost


@pytest.mark.parametrize("ended", ["killed", "noticed", "stopped"])
async def test_taking_over_from_a_node_that_led_is_a_leader_change(
    pg_fleet: Fleet, ended: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The leader ran cycles while the standby waited; then it is killed (its row still
    says `leader`), loses its lock and says so first (`standby`), or stops (`gone`). The
    standby that takes over is a new leader: audited and alerted."""
    feeder = await alerts_for_new_rows(pg_fleet.db)
    lock = pg_fleet.lock()
    old = await pg_fleet.node(1, lock=lock)
    standby = await pg_fleet.node(2)
    assert await old.ensure()
    assert await standby.ensure() is False
    await old.good_cycle()
    await lock.release()  # the session ends: with a kill -9, nothing else is written
    if ended == "noticed":
        assert await old.ensure() is False
    elif ended == "stopped":
        await old.stop()
    caplog.set_level(logging.INFO, logger="watchdog.daemon.leadership")
    caplog.clear()  # the old leader's line about its lost lock

    assert await wins(standby)

    first, takeover = await leads(pg_fleet.db)
    assert first.detail.get("first") is True
    assert "first" not in takeover.detail
    assert takeover.detail["node"] == "host:2"
    assert await feeder.feed() == 1  # leader_changed, to the one sink
    role = {"killed": "lost", "noticed": "standby", "stopped": "gone"}[ended]
    assert (await rows_of(pg_fleet.db))["host:1"].role == role
    (line,) = [r for r in caplog.records if r.name == "watchdog.daemon.leadership"]
    assert line.levelname == "WARNING"
