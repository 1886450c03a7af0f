"""Leadership on real databases: real leader locks (a file lock on SQLite, an advisory
lock on PostgreSQL), the real node rows, audit trail and alert feeder. Failures are
real ones too: a trigger makes the database refuse one write."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from watchdog.daemon import CycleRunner
from watchdog.errors import StoreError
from watchdog.leadership import LeaderLock, Leadership, NodeIdentity
from watchdog.model import AuditAction, AuditRow
from watchdog.ports import AuditQuery
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
