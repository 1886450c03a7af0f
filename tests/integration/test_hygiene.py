"""Resource hygiene under churn: a thousand cycles of the real stack on an SQLite file must
not leak file descriptors, threads, asyncio tasks, pooled connections or Python memory.

The stack is the daemon's own (Database, SqlInstanceStore, SqlLedger, SqlFleetState behind
the guards, Engine); only the recovery rungs are `RecordingRecovery` fakes, whose effect
sometimes makes the instance beat again. A fleet of 50 instances churns throughout:
instances freeze, recover, are added, disabled and deleted, so every path of the cycle
(detect, act on each rung, fail, time out, exhaust, recover, dismiss) runs many times.
Time is real: the database clock judges heartbeats, so the escalation is shrunk to
milliseconds and nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import statistics
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import sqlalchemy as sa

from tests.apptable import SQLITE_FORMATS, AppTable
from watchdog.clock import SystemClock
from watchdog.config import InstancesSettings
from watchdog.core.model import Action, Target
from watchdog.core.policy import DetectionRules, EscalationRules, LadderStep
from watchdog.core.safety import SafetyRules
from watchdog.engine.cycle import Engine
from watchdog.engine.guards import Guards
from watchdog.store import migrate
from watchdog.store.database import Database
from watchdog.store.fleet import SqlFleetState
from watchdog.store.instances import SqlInstanceStore
from watchdog.store.ledger import SqlLedger
from watchdog.store.schema import audit
from watchdog.testing import RecordingRecovery

CYCLES = 1000
WARMUP = 100  # pools, caches and free lists fill up in the first cycles
SAMPLE_EVERY = 100
FLEET = 50
PROCESSES = 5

STALE_AFTER = 5.0  # seconds of the database clock; healthy instances beat far more often
FROZEN_AGO = 3600.0  # a frozen instance's heartbeat: an hour ago
REFRESH_EVERY = 10  # cycles between heartbeats of the healthy fleet (< 1 s of real time)
CHURN_EVERY = 10  # cycles between freezes (or self-recoveries)
ADD_EVERY = 20  # cycles between additions (and removals)
MAX_FROZEN = 5  # well below half the fleet: the mass-failure brake stays released...
STORM_EVERY = 500  # ...except in a storm: two thirds of the fleet freeze at once, the
STORM_AT = 50  # first during the warm-up (the brake's statements are compiled by then),
STORM_LENGTH = 10  # and beat again this many cycles later
RECOVERY_EFFECT = 0.15  # chance that a successful recovery call makes the instance beat

# The one number that is not a count: tracemalloc's traced size may wobble (caches, free
# lists, the size of the latest query result) but must not trend upwards. The fitted growth
# over the 900 measured cycles must stay under 512 KiB, ~580 bytes a cycle. Checked by
# planting leaks: keeping every audit row written (~1,700 in those cycles) grows ~690 KiB,
# keeping each cycle's `load_open()` result (a few incidents) ~1.1 MiB; both fail here,
# and the first would pass a 1 MiB bound. Clean runs drift 15-80 KiB (bounded caches:
# `re`'s pattern cache fed by SQLAlchemy's IN-list expansion, free lists), so the bound
# has 6x headroom. A leak of under ~100 bytes a cycle (one small object per recovery
# call) stays below what 1,000 cycles can show and needs a longer soak.
MAX_GROWTH = 512 * 2**10

DETECTION = DetectionRules(stale_after=STALE_AFTER)
SETTLE = 0.001  # backoff needs a positive settle; this keeps every incident moving
ESCALATION = EscalationRules(
    ladder=(
        LadderStep(Action.API_RESTART, 2, SETTLE),
        LadderStep(Action.DB_FLAG, 3, SETTLE),
        LadderStep(Action.PROCESS_RESTART, None, SETTLE),
    ),
    max_attempts=10,
    backoff_cap=0.01,
    jitter=0.0,
    reopen_window=0.5,
)

# Restart budgets that return within a few cycles: suppression happens, and then the
# ladder goes on to exhaustion instead of waiting an hour of real time.
SAFETY = SafetyRules(process_restart_window=0.1, fleet_restart_window=0.1)


# --------------------------------------------------------------------------- the fleet


@dataclass
class Fleet:
    """The application's side: which instances beat, which are frozen, and the churn."""

    app: AppTable
    rng: random.Random
    live: set[str] = field(default_factory=set)
    frozen: dict[str, None] = field(default_factory=dict)  # oldest first
    disabled: list[str] = field(default_factory=list)
    pending: set[str] = field(default_factory=set)  # made to beat by a recovery call
    storm: list[str] = field(default_factory=list)  # frozen all at once
    added: int = 0

    def add(self) -> str:
        instance_id = f"inst-{self.added:04d}"
        process = f"proc-{self.added % PROCESSES}"
        self.app.add(instance_id, heartbeat_ago=0.0, process=process)
        self.live.add(instance_id)
        self.added += 1
        return instance_id

    def effect(self, target: Target) -> None:
        """A recovery call's effect. Deferred: the test's loop writes the heartbeat between
        cycles, as a synchronous write inside the event loop would block it."""
        if self.rng.random() < RECOVERY_EFFECT:
            self.pending.add(target.instance_id)

    def apply_recoveries(self) -> None:
        for instance_id in sorted(self.pending):
            if instance_id in self.frozen:
                self.recover(instance_id)
        self.pending.clear()

    def freeze(self, instance_id: str) -> None:
        self.app.beat(instance_id, ago=FROZEN_AGO)
        self.live.discard(instance_id)
        self.frozen[instance_id] = None

    def recover(self, instance_id: str) -> None:
        self.app.beat(instance_id)
        del self.frozen[instance_id]
        self.live.add(instance_id)

    def refresh(self) -> None:
        """Every live instance beats now (one statement, as a fleet of writers would)."""
        m = self.app.mapping
        now = f"strftime('{SQLITE_FORMATS['sqlite']}', 'now')"
        statement = sa.text(
            f"UPDATE {m.table} SET {m.heartbeat} = {now} WHERE {m.id} IN :ids"
        ).bindparams(sa.bindparam("ids", expanding=True))
        with self.app.engine.begin() as conn:
            conn.execute(statement, {"ids": sorted(self.live)})

    def churn(self, cycle: int) -> None:
        """Every few cycles one instance freezes; every few more one is added and one is
        disabled or deleted; now and then most of the fleet freezes at once (the brake)
        and comes back."""
        if cycle % STORM_EVERY == STORM_AT:
            self.storm = sorted(self.live)[: len(self.live) * 2 // 3]
            for instance_id in self.storm:
                self.freeze(instance_id)
        elif self.storm and cycle % STORM_EVERY == STORM_AT + STORM_LENGTH:
            for instance_id in self.storm:
                if instance_id in self.frozen:
                    self.recover(instance_id)
            self.storm = []
        if not self.storm:
            self.freeze_or_recover()
        if cycle % ADD_EVERY == 0:
            self.replace_one(deleting=cycle % (2 * ADD_EVERY) == 0)

    def freeze_or_recover(self) -> None:
        """Freeze one more, or when enough are frozen (mostly exhausted ones by then) the
        one frozen longest beats again by itself."""
        if len(self.frozen) < MAX_FROZEN:
            self.freeze(self.rng.choice(sorted(self.live)))
        else:
            self.recover(next(iter(self.frozen)))

    def replace_one(self, *, deleting: bool) -> None:
        """A new instance, and one leaves (a frozen one half the time: its open incident is
        dismissed)."""
        self.add()
        frozen = bool(self.frozen) and self.rng.random() < 0.5
        victim = self.rng.choice(sorted(self.frozen if frozen else self.live))
        if deleting:
            self._execute("DELETE FROM {table} WHERE {id} = :id", victim)
        else:
            self._execute("UPDATE {table} SET {enabled} = FALSE WHERE {id} = :id", victim)
            self.disabled.append(victim)
        self.live.discard(victim)
        self.frozen.pop(victim, None)
        if len(self.disabled) > 5:  # keep the table from growing
            self._execute("DELETE FROM {table} WHERE {id} = :id", self.disabled.pop(0))

    def _execute(self, template: str, instance_id: str) -> None:
        m = self.app.mapping
        sql = template.format(table=m.table, enabled=m.enabled, id=m.id)
        with self.app.engine.begin() as conn:
            conn.execute(sa.text(sql), {"id": instance_id})


# ------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Sample:
    cycle: int
    fds: int
    threads: int
    tasks: int
    checked_out: int
    pooled: int  # idle connections the pool keeps (each an aiosqlite thread and a file)
    traced: int


def sample(cycle: int, db: Database) -> Sample:
    gc.collect()  # cyclic garbage is not a leak; let it go before measuring
    pool: Any = db.engine.sync_engine.pool  # a QueuePool; the Pool base class lacks the counts
    return Sample(
        cycle=cycle,
        fds=psutil.Process().num_fds(),
        threads=threading.active_count(),
        tasks=len(asyncio.all_tasks()),
        checked_out=pool.checkedout(),
        pooled=pool.checkedin(),
        traced=tracemalloc.get_traced_memory()[0],
    )


@pytest.fixture
def tracing() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


@pytest.fixture
def quiet() -> Iterator[None]:
    """The core's warnings (budget spent, ...) would pile up in pytest's log capture, which
    is memory this test measures; errors still get through."""
    logger = logging.getLogger("watchdog")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# -------------------------------------------------------------------------- the stack


@pytest.fixture
def app(tmp_path: Path) -> Iterator[AppTable]:
    table = AppTable(f"sqlite:///{tmp_path / 'app.db'}", InstancesSettings(process="process"))
    table.create()
    yield table
    table.dispose()


def no_fsync(dbapi_conn: Any, _record: Any) -> None:
    """Durability is not under test: without an fsync per commit a cycle costs half."""
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA synchronous = OFF")
    cursor.close()


@pytest.fixture
async def db(app: AppTable) -> AsyncIterator[Database]:
    sa.event.listen(app.engine, "connect", no_fsync)
    database = Database(app.url, timeout=5.0)
    sa.event.listen(database.engine.sync_engine, "connect", no_fsync)
    await migrate.upgrade(database)
    yield database
    await database.dispose()


def build_engine(
    db: Database, app: AppTable, fleet: Fleet
) -> tuple[Engine, list[RecordingRecovery]]:
    instances = SqlInstanceStore(db, app.mapping, DETECTION)
    ledger = SqlLedger(db)
    guards = Guards(ledger, SqlFleetState(db, ledger), SAFETY, startup_grace=False)
    ids = [f"inst-{i:04d}" for i in range(CYCLES)]  # more than will ever be added
    recoveries = [
        # An API restart of inst-xxx3 fails: the failure path runs throughout.
        RecordingRecovery(Action.API_RESTART, fail=ids[3::10], effect=fleet.effect),
        # A flag write for inst-xxx7 hangs until the engine's bound cancels it.
        RecordingRecovery(Action.DB_FLAG, timeout=0.005, hang=ids[7::10], effect=fleet.effect),
        RecordingRecovery(Action.PROCESS_RESTART, key_by="process", effect=fleet.effect),
    ]
    engine = Engine(
        instances,
        ledger,
        {r.action: r for r in recoveries},
        ESCALATION,
        SystemClock(),
        jitter=lambda: 0.0,
        timeout_margin=0.0,
        guards=guards,
    )
    return engine, recoveries


async def fill_pool(db: Database) -> None:
    """Open as many connections as the pool keeps, and give them back. How many it keeps
    otherwise depends on the busiest moment so far (how many actions finished at once),
    which would make the thread and file counts depend on timing; filled, they may not
    move at all."""
    pool: Any = db.engine.sync_engine.pool
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(pool.size()):
            await stack.enter_async_context(db.connect("fill the pool"))
    assert pool.checkedin() == pool.size()


async def audit_counts(db: Database) -> dict[str, int]:
    """Audit rows by action, and by outcome (`outcome:failed`, ...)."""
    counts: dict[str, int] = {}
    async with db.connect("count audit rows") as conn:
        for column in (audit.c.action, audit.c.outcome):
            query = sa.select(column, sa.func.count()).group_by(column)
            for value, n in await conn.execute(query):
                key = str(value) if column is audit.c.action else f"outcome:{value}"
                counts[key] = int(n)
    return counts


# ------------------------------------------------------------------------------ test


@pytest.mark.usefixtures("quiet", "tracing")
async def test_a_thousand_churning_cycles_leak_nothing(app: AppTable, db: Database) -> None:
    started = time.perf_counter()
    fleet = Fleet(app, random.Random(20240101))
    for _ in range(FLEET):
        fleet.add()
    engine, recoveries = build_engine(db, app, fleet)
    await fill_pool(db)

    calls = 0
    samples: list[Sample] = []
    for cycle in range(1, CYCLES + 1):
        await engine.run_cycle()
        assert await engine.drain(timeout=5.0)
        fleet.apply_recoveries()
        for recovery in recoveries:  # the fakes' own records would grow without bound
            calls += len(recovery.calls)
            recovery.calls.clear()
        if cycle % CHURN_EVERY == 0:
            fleet.churn(cycle)
        if cycle % REFRESH_EVERY == 0:
            fleet.refresh()
        if cycle >= WARMUP and cycle % SAMPLE_EVERY == 0:
            samples.append(sample(cycle, db))
    elapsed = time.perf_counter() - started

    counts = await audit_counts(db)
    report(samples, counts, calls, elapsed)

    # The churn really exercised the cycle's paths (typical counts are several times these).
    expected = {
        "detected": 50,
        "recovered": 50,
        "api_restart": 50,
        "db_flag": 50,
        "process_restart": 50,
        "dismissed": 5,
        "exhausted": 5,
        "brake_engaged": 1,
        "brake_released": 1,
        "outcome:failed": 5,
    }
    for key, least in expected.items():
        assert counts.get(key, 0) >= least, (key, counts)
    assert calls >= 100

    assert len(samples) == (CYCLES - WARMUP) // SAMPLE_EVERY + 1
    first, last = samples[0], samples[-1]
    for name in ("fds", "threads", "tasks", "checked_out", "pooled"):
        values = [getattr(s, name) for s in samples]
        assert abs(getattr(last, name) - getattr(first, name)) <= 1, (name, values)
    # Between cycles no connection is held but the one kept for the detection query, and
    # no task is left but this test's own.
    assert [(s.checked_out, s.tasks) for s in samples] == [(db.kept, 1)] * len(samples)
    assert db.kept == 1

    growth = traced_growth(samples)
    assert growth < MAX_GROWTH, f"traced memory grows {growth / 1024:.0f} KiB over the run"


def traced_growth(samples: list[Sample]) -> float:
    """Least-squares growth of tracemalloc's traced size between the first and last sample."""
    fit = statistics.linear_regression([s.cycle for s in samples], [s.traced for s in samples])
    return fit.slope * (samples[-1].cycle - samples[0].cycle)


def report(samples: list[Sample], counts: dict[str, int], calls: int, elapsed: float) -> None:
    """Printed for `pytest -s`: the figures behind the assertions."""
    print(f"\n{CYCLES} cycles in {elapsed:.1f}s; {calls} recovery calls; audit rows {counts}")
    print("cycle  fds  threads  tasks  checked_out  pooled  traced_KiB")
    for s in samples:
        row = f"{s.cycle:5d} {s.fds:4d} {s.threads:8d} {s.tasks:6d} {s.checked_out:12d}"
        row += f" {s.pooled:7d}"
        print(f"{row} {s.traced / 1024:11.1f}")
    growth = traced_growth(samples)
    print(f"traced growth (least squares) over the run: {growth / 1024:.1f} KiB")
