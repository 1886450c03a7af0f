"""Scenario 1 — cycle cost against fleet size, in-process, on PostgreSQL and SQLite.

For each fleet: the engine in dry-run (`Engine.run_cycle`), the scan alone
(`SqlInstanceStore.scan`) and the raw SQL of the same detection query run through the
driver (psycopg / sqlite3), interleaved in one loop so they see the same caches.
Statements are counted with a `before_cursor_execute` listener. The monitored count is
a full pass that the store runs once a minute (and whenever the unhealthy are a large
share of it), not every cycle: the steady cycles here do not count, so the raw query is
the one they run, and the counting query is timed beside it. The cycle, the scan and the
raw query take turns at running first after it. A dry-run records each
would-be decision once: the first cycle writes those `skipped` rows (timed and counted
apart), the steady cycles after it write none unless something changed.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from bench import fleet
from bench.common import Env, Results, median, pct
from watchdog.clock import SystemClock
from watchdog.config import DetectionSettings, EscalationSettings, InstancesSettings
from watchdog.core.ports import NewAudit
from watchdog.engine.cycle import Engine
from watchdog.store.database import Database
from watchdog.store.instances import SqlInstanceStore
from watchdog.store.ledger import SqlLedger
from watchdog.store.state import REVISION

NAME = "cycle"
DEFAULT_INTERVAL = DetectionSettings().interval
COUNT_EVERY = 60.0  # SqlInstanceStore's default count_every


class TimedLedger(SqlLedger):
    """SqlLedger that times its audit appends (what a dry-run cycle writes, in batches)."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.seconds = 0.0
        self.appends = 0
        self.appending = False

    async def append_all(self, rows: Sequence[NewAudit]) -> Any:
        started = time.perf_counter()
        self.appending = True
        try:
            return await super().append_all(rows)
        finally:
            self.appending = False
            self.seconds += time.perf_counter() - started
            self.appends += len(rows)


@dataclass
class Counter:
    ledger: TimedLedger
    total: int = 0
    audit: int = 0

    def __call__(self, *_args: Any) -> None:
        self.total += 1
        if self.ledger.appending:
            self.audit += 1


@dataclass
class Samples:
    cycle: list[float] = field(default_factory=list)
    audit: list[float] = field(default_factory=list)
    scan: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    counting: list[float] = field(default_factory=list)
    statements: list[int] = field(default_factory=list)
    audit_statements: list[int] = field(default_factory=list)
    audit_rows: list[int] = field(default_factory=list)
    first_cycle: float = 0.0
    first_audit_rows: int = 0


class RawQuery:
    """The compiled detection query, run through the bare driver."""

    def __init__(self, url: str, sql: str) -> None:
        parsed = make_url(url)
        self.sql = sql
        if parsed.get_backend_name() == "sqlite":
            self._conn: Any = sqlite3.connect(parsed.database)
        else:
            conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
            self._conn = psycopg.connect(conninfo, autocommit=True)

    def run(self) -> int:
        return len(self._conn.execute(self.sql).fetchall())

    def close(self) -> None:
        self._conn.close()


def plan(quick: bool) -> list[tuple[int, int, float]]:
    """(fleet size, max cycles, seconds budget per backend)."""
    if quick:
        return [(1_000, 3, 3.0)]
    return [(1_000, 30, 12.0), (10_000, 30, 20.0), (100_000, 30, 40.0)]


# What README suggests for large fleets on PostgreSQL: the steady query's cut-offs can then
# be read from indexes instead of every row (at the price of index upkeep on each beat).
SUGGESTED_INDEXES = (
    "CREATE INDEX bench_ix_heartbeat ON instances (last_heartbeat_at)",
    "CREATE INDEX bench_ix_status ON instances (connection_status, status_changed_at)",
)


async def measure(
    url: str, n: int, cycles: int, budget: float, *, indexed: bool = False
) -> tuple[Samples, dict[str, Any]]:
    db = Database(url, 5.0)
    raw: RawQuery | None = None
    counting: RawQuery | None = None
    try:
        await fleet.build(db, n)
        if indexed:
            async with db.connect("bench indexes") as conn:
                auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
                for statement in (*SUGGESTED_INDEXES, "ANALYZE instances"):
                    await auto.execute(sa.text(statement))
        rules = DetectionSettings().rules()
        store = SqlInstanceStore(db, InstancesSettings(), rules, ledger_revision=REVISION)
        await store.check()  # reads the column types, as the daemon does at start
        ledger = TimedLedger(db)
        engine = Engine(
            store, ledger, {}, EscalationSettings().rules(), SystemClock(), dry_run=True
        )
        # The statement the steady cycles run: told the ids judged unhealthy last time.
        sql = store.detection_sql_knowing(list((await store.scan()).findings))
        raw = RawQuery(url, sql)
        counting = RawQuery(url, store.counting_sql)
        counter = Counter(ledger)
        sa.event.listen(db.engine.sync_engine, "before_cursor_execute", counter)
        samples = Samples()
        t0 = time.perf_counter()
        await engine.run_cycle()  # also the warm-up: connections, caches, compiled statements
        samples.first_cycle = time.perf_counter() - t0
        gc.freeze()  # as the daemon does once started (runner._run)
        samples.first_audit_rows = ledger.appends
        await store.scan()
        raw.run()
        started = time.monotonic()
        scan_rows = raw_rows = 0
        for i in range(cycles):
            if i >= 3 and time.monotonic() - started > budget:
                break
            # The three take turns at coming first: whichever follows the counting query
            # (a full pass) meets caches it has just cooled, and that must not always be
            # the same one.
            for turn in range(3):
                which = (i + turn) % 3
                if which == 0:
                    counter.total = counter.audit = 0
                    ledger.seconds, ledger.appends = 0.0, 0
                    t0 = time.perf_counter()
                    await engine.run_cycle()
                    samples.cycle.append(time.perf_counter() - t0)
                    samples.audit.append(ledger.seconds)
                    samples.statements.append(counter.total)
                    samples.audit_statements.append(counter.audit)
                    samples.audit_rows.append(ledger.appends)
                elif which == 1:
                    t0 = time.perf_counter()
                    scan = await store.scan()
                    samples.scan.append(time.perf_counter() - t0)
                    scan_rows = len(scan.findings)
                else:
                    t0 = time.perf_counter()
                    raw_rows = raw.run()
                    samples.raw.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            counting.run()
            samples.counting.append(time.perf_counter() - t0)
        sa.event.remove(db.engine.sync_engine, "before_cursor_execute", counter)
        info = {"unhealthy_found": scan_rows, "raw_rows": raw_rows, "monitored": n, "sql": sql}
        return samples, info
    finally:
        for query in (raw, counting):
            if query is not None:
                query.close()
        await db.dispose()
        gc.unfreeze()


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def report(results: Results, backend: str, n: int, s: Samples, info: dict[str, Any]) -> None:
    label = f"{NAME} {backend} {n // 1000}k"
    cycle_med, raw_med = median(s.cycle), median(s.raw)
    reads = [c - a for c, a in zip(s.cycle, s.audit, strict=True)]
    ratio = cycle_med / raw_med if cycle_med and raw_med else None
    target_cycle = backend == "pg" and n == 100_000
    results.add(
        label,
        "cycle median (dry-run)",
        _ms(cycle_med),
        "ms",
        "≤ 50 ms" if target_cycle else "",
        (cycle_med is not None and cycle_med <= 0.05) if target_cycle else None,
    )
    results.add(label, "cycle p95 (dry-run)", _ms(pct(s.cycle, 95)), "ms")
    results.add(label, "  of which dry-run audit writes", _ms(median(s.audit)), "ms")
    results.add(label, "  cycle without audit writes", _ms(median(reads)), "ms")
    results.add(label, "first cycle (records would-be decisions)", _ms(s.first_cycle), "ms")
    results.add(label, "  audit rows it wrote", s.first_audit_rows, "")
    results.add(label, "scan alone median", _ms(median(s.scan)), "ms")
    results.add(label, "raw detection query median", _ms(raw_med), "ms")
    results.add(
        label,
        "  the same with the monitored count (once a minute)",
        _ms(median(s.counting)),
        "ms",
    )
    counting_med = median(s.counting)
    if cycle_med is not None and raw_med is not None and counting_med is not None:
        # One cycle in twelve (5 s interval) also counts: its extra cost, spread over them.
        amortized = cycle_med + (counting_med - raw_med) * DEFAULT_INTERVAL / COUNT_EVERY
        results.add(
            label, "  cycle with the count's cost spread over a minute", _ms(amortized), "ms"
        )
    results.add(
        label,
        "cycle / raw query",
        None if ratio is None else round(ratio, 2),
        "×",
        "≤ 1.2×" if target_cycle else "",
        (ratio <= 1.2) if target_cycle and ratio is not None else None,
    )
    scan_ratio = median(s.scan) / raw_med if raw_med and s.scan else None
    results.add(
        label, "scan / raw query", None if scan_ratio is None else round(scan_ratio, 2), "×"
    )
    results.add(label, "statements / cycle", median(s.statements), "")
    results.add(label, "  of which dry-run audit", median(s.audit_statements), "")
    results.add(label, "audit rows / cycle (dry-run)", median(s.audit_rows), "")
    results.details.setdefault(NAME, {})[f"{backend}-{n}"] = {
        "cycles": len(s.cycle),
        "cycle_s": s.cycle,
        "audit_s": s.audit,
        "scan_s": s.scan,
        "raw_s": s.raw,
        "counting_raw_s": s.counting,
        "statements": s.statements,
        "audit_statements": s.audit_statements,
        "audit_rows": s.audit_rows,
        "first_cycle_s": s.first_cycle,
        "first_audit_rows": s.first_audit_rows,
        **info,
    }


def _indexed(env: Env, results: Results, n: int, cycles: int, budget: float) -> None:
    """The largest fleet on PostgreSQL again, with README's two suggested indexes."""
    name = f"bench_cycle_{n}_indexed"
    url = env.cluster.create_database(name)
    print(f"  {NAME}: pg {n} instances, with the suggested indexes …", flush=True)
    samples, _info = asyncio.run(measure(url, n, cycles, budget, indexed=True))
    label = f"{NAME} pg {n // 1000}k indexed"
    results.add(label, "cycle median (dry-run)", _ms(median(samples.cycle)), "ms")
    results.add(label, "raw detection query median", _ms(median(samples.raw)), "ms")
    env.cluster.drop_database(name)


def run(env: Env, results: Results) -> None:
    read_counts: dict[str, list[float]] = {}
    for n, cycles, budget in plan(env.quick):
        for backend in ("pg", "sqlite"):
            name = f"bench_cycle_{n}"
            url = env.cluster.create_database(name) if backend == "pg" else env.sqlite_url(name)
            print(f"  {NAME}: {backend} {n} instances …", flush=True)
            samples, info = asyncio.run(measure(url, n, cycles, budget))
            report(results, backend, n, samples, info)
            reads = [
                t - a for t, a in zip(samples.statements, samples.audit_statements, strict=True)
            ]
            read_counts.setdefault(backend, []).append(median(reads) or 0)
            if backend == "pg":
                env.cluster.drop_database(name)
    if not env.quick:
        _indexed(env, results, *plan(False)[-1])
    for backend, counts in read_counts.items():
        results.add(
            f"{NAME} {backend}",
            "non-audit statements/cycle, smallest→largest fleet",
            counts[-1] - counts[0],
            "Δ",
            "constant (Δ 0)",
            counts[-1] == counts[0],
        )
