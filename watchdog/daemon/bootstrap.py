"""`watchdogctl run`: open the stores, check the schema, build the engine, run.

The daemon never gives up on its database at start: while it is unreachable it logs
once, waits and tries again (systemd sees no READY yet); a schema that is wrong is an
operator's problem and exits 1 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import importlib.metadata
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from watchdog import views
from watchdog.alerts.sender import AlertFeeder, AlertSender
from watchdog.clock import SystemClock
from watchdog.config import Settings, bearer_token
from watchdog.core.breaker import BreakerRules
from watchdog.core.errors import StoreUnavailable
from watchdog.core.model import AuditRow
from watchdog.core.safety import SafetyRules
from watchdog.daemon.health import HealthServer
from watchdog.daemon.leadership import LeaderLock, Leadership, NodeIdentity
from watchdog.daemon.loop import Daemon, SideJob, StopSignals, run_once
from watchdog.daemon.metrics import Metrics
from watchdog.daemon.reconcile import IntentReconciler
from watchdog.daemon.selfcheck import DaemonMonitor, MemoryWatch
from watchdog.engine.breakers import BackendBreakers
from watchdog.engine.cycle import Engine
from watchdog.engine.guards import Guards
from watchdog.observability import emit_audit, get_logger
from watchdog.store import migrate
from watchdog.store.breakers import SqlBreakerStore
from watchdog.store.fleet import SqlFleetState
from watchdog.store.locks import PgAdvisoryLock, SqliteFileLock
from watchdog.store.nodes import Node, SqlNodes
from watchdog.store.retention import Keep, SqlRetention
from watchdog.wiring import (
    Runtime,
    breaker_names,
    open_recoveries,
    open_runtime,
    sqlite_path,
)

log = get_logger(component="runner")

RETENTION_EVERY = 3600.0  # seconds between retention runs of the leader
RETENTION_CHECK = 60.0  # how soon after taking the lead the first run comes


async def run_daemon(settings: Settings, *, once: bool, dry_run: bool) -> int:
    metrics = Metrics()

    def emit(row: AuditRow) -> None:
        emit_audit(row)
        metrics.observe_audit(row)

    # Signals are ours from here on: a SIGTERM during start-up is a clean stop too.
    with StopSignals().installed() as signals:
        async with open_runtime(settings, emit) as runtime:
            if once:
                await _prepare(runtime)
                return await _run(runtime, signals, once=True, dry_run=dry_run, monitor=None)
            monitor = _monitor(runtime, metrics)
            async with _health_server(settings, monitor):
                if not await _wait_for_database(runtime, signals):
                    return 0  # stopped while waiting
                return await _run(runtime, signals, once=False, dry_run=dry_run, monitor=monitor)


async def _run(
    runtime: Runtime,
    signals: StopSignals,
    *,
    once: bool,
    dry_run: bool,
    monitor: DaemonMonitor | None,
) -> int:
    settings = runtime.settings
    breakers = await _breakers(runtime)
    guards = _guards(runtime, startup_grace=not once)
    live: set[int] = set()  # intents whose action is in flight here: never `interrupted`
    me = _identity(settings)
    reconciler = IntentReconciler(
        runtime.ledger,
        SqlNodes(runtime.db).all,
        me.node_id,
        live,
        node_timeout=max(10.0, 3 * settings.detection.interval + settings.database.timeout),
        host=me.host,
    )
    leadership = await _leadership(runtime, me, breakers, reconciler, guards, dry_run)
    try:
        async with open_recoveries(runtime) as recoveries, _alert_jobs(runtime, leadership) as jobs:
            engine = Engine(
                runtime.instances,
                runtime.ledger,
                recoveries,
                settings.escalation.rules(),
                SystemClock(),
                dry_run=dry_run,
                max_concurrent_actions=settings.daemon.max_concurrent_actions,
                guards=guards,
                breakers=breakers,
                fence=leadership.fence,
                owner=me.node_id,
                live=live,
            )
            if once:
                signals.on_stop(engine.stop_acting)
                return await run_once(engine, settings.daemon.shutdown_timeout, leadership)
            # Everything alive now (libraries, compiled SQL, configuration) lives as long as
            # the process: out of the cyclic collector's way, each cycle's collections scan
            # only what cycles allocate (about 10 ms a cycle less at 100,000 instances).
            gc.freeze()
            if not dry_run:
                jobs.append(_reconcile_job(reconciler, leadership, settings.detection.interval))
                jobs.extend(_retention_jobs(runtime, leadership, signals))
            daemon = Daemon(
                engine,
                settings.detection.interval,
                settings.daemon.shutdown_timeout,
                leadership=leadership,
                monitor=monitor,
                side_jobs=jobs,
                signals=signals,
            )
            return await daemon.run()
    finally:
        # Also when the start fails before the first cycle: no live-looking row is left.
        await leadership.stop()


@contextlib.asynccontextmanager
async def _alert_jobs(runtime: Runtime, leadership: Leadership) -> AsyncIterator[list[SideJob]]:
    """Alert feeding and delivery, on every replica (both are safe concurrently)."""
    alerts = runtime.settings.alerts
    if not alerts.sinks:
        yield []
        return
    async with httpx.AsyncClient(follow_redirects=False) as client:
        feeder = AlertFeeder(runtime.db, alerts.sinks)
        sender = AlertSender(
            runtime.db, alerts.sinks, leadership.node_id, client, alerts.max_attempts
        )

        await feeder.feed()  # set the cursor now: events from the first cycle on are alerted

        async def send() -> None:
            await sender.send_due()

        async def feed() -> None:
            await feeder.feed()

        yield [
            SideJob("alerts_feed", alerts.interval, feed),
            SideJob("alerts_send", alerts.interval, send),
        ]


def _monitor(runtime: Runtime, metrics: Metrics) -> DaemonMonitor:
    settings = runtime.settings
    return DaemonMonitor(
        metrics,
        MemoryWatch.from_megabytes(settings.daemon.memory_limit_mb),
        interval=settings.detection.interval,
        slack=settings.database.timeout * 3,
        ready_max_age=settings.health.ready_max_age,
        status=lambda: fleet_status(runtime),
    )


@contextlib.asynccontextmanager
async def _health_server(settings: Settings, monitor: DaemonMonitor) -> AsyncIterator[None]:
    """The health endpoint, when enabled: up before the database, so /readyz can say 503."""
    if not settings.health.enabled:
        yield
        return
    token = bearer_token("health.token_env", settings.health.token_env)
    server = HealthServer(settings.health, monitor, monitor.metrics, token)
    await server.start()
    log.info("health_endpoint", host=settings.health.host, port=server.port)
    try:
        yield
    finally:
        await server.stop()


async def fleet_status(runtime: Runtime) -> dict[str, Any]:
    """/status: the same view as `watchdogctl status --json`, with the fleet around it."""
    view = await views.fleet_view(runtime)
    interval = runtime.settings.detection.interval
    return {
        "now": view.now.isoformat(),
        "fleet": dataclasses.asdict(view.census) if view.census else None,
        "table_error": view.table_error or None,
        "acting": view.acting.detail,
        "nodes": [views.node_record(n, view.now, interval) for n in view.nodes],
        "breakers": [dataclasses.asdict(b) for b in view.breakers],
        "brake": view.brake,
        "incidents": views.status_records(view, runtime.settings.escalation.rules()),
    }


def _identity(settings: Settings) -> NodeIdentity:
    return NodeIdentity(
        settings.ha.node_id or f"{socket.gethostname()}:{os.getpid()}",
        socket.gethostname(),
        os.getpid(),
    )


def _reconcile_job(reconciler: IntentReconciler, leadership: Leadership, every: float) -> SideJob:
    """The leader looks again at intents left to a node that may still record them."""

    async def recheck() -> None:
        if leadership.is_leader:
            await reconciler.recheck()

    return SideJob("reconcile", max(every, 1.0), recheck)


def _retention_jobs(
    runtime: Runtime, leadership: Leadership, signals: StopSignals
) -> list[SideJob]:
    """The leader deletes history older than `[retention]` keeps (none when it keeps all)."""
    settings = runtime.settings
    r = settings.retention
    floor = max(settings.escalation.reopen_window, settings.safety.flapping_window)
    keep = Keep.days(r.audit_days, r.incidents_days, r.outbox_days, incidents_floor=floor)
    if keep.forever:
        return []
    retention = SqlRetention(runtime.db, runtime.ledger, keep)

    def leading() -> bool:
        return leadership.is_leader

    def proceed() -> bool:  # between batches: stop for a shutdown or a lost lead
        return leading() and not signals.requested.is_set()

    async def prune() -> None:
        await retention.run(proceed)

    return [retention_job(prune, leading)]


def retention_job(
    prune: Callable[[], Awaitable[None]],
    leading: Callable[[], bool],
    every: float = RETENTION_EVERY,
    check: float = RETENTION_CHECK,
    monotonic: Callable[[], float] = time.monotonic,
) -> SideJob:
    """Run `prune` every `every` seconds while leading, and at the first check after
    taking the lead (a new leader may follow one that pruned long ago, or never)."""
    last: float | None = None  # when this node last pruned since it took the lead

    async def maybe_prune() -> None:
        nonlocal last
        if not leading():
            last = None
            return
        if last is not None and monotonic() - last < every:
            return
        last = monotonic()  # also when the run fails: the next try is a period later
        await prune()

    return SideJob("retention", check, maybe_prune)


async def _leadership(
    runtime: Runtime,
    me: NodeIdentity,
    breakers: BackendBreakers,
    reconciler: IntentReconciler,
    guards: Guards,
    dry_run: bool,
) -> Leadership:
    """Register this node; on SQLite refuse to start next to another daemon at once."""
    settings = runtime.settings
    path = sqlite_path(settings.database.url)
    lock: LeaderLock
    if runtime.db.is_sqlite and path is not None:
        lock = SqliteFileLock(path)
        await lock.acquire()  # raises ConfigError naming the other daemon's pid
    else:
        lock = PgAdvisoryLock(
            settings.database.url,
            settings.ha.lock_key,
            settings.database.timeout,
            on_lost=lambda error: _lock_lost(guards, error),
        )
    nodes = SqlNodes(runtime.db)
    now = await runtime.instances.now()
    await nodes.register(Node(me.node_id, me.host, me.pid, "standby", _version(), now))

    async def on_lead() -> None:
        # A predecessor may have died mid-action, and its breakers are ours now.
        if not dry_run:
            await reconciler.on_lead()
        await breakers.load()

    return Leadership(lock, nodes, runtime.ledger, me, on_lead)


def _lock_lost(guards: Guards, error: str) -> None:
    """The leader lock's connection failed: the database was away or our session was
    killed. An outage seen, whatever the scan says next."""
    log.error("leader_lock_connection_lost", error=error)
    guards.database_lost()


def _version() -> str:
    try:
        return importlib.metadata.version("instance-watchdog")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _guards(runtime: Runtime, *, startup_grace: bool) -> Guards:
    settings = runtime.settings
    safety = settings.safety.model_dump(exclude={"retry_attempts"})
    grace = settings.detection.grace
    return Guards(
        runtime.ledger,
        SqlFleetState(runtime.db, runtime.ledger),
        SafetyRules(**safety),
        grace=settings.detection.stale_after if grace is None else grace,
        startup_grace=startup_grace,
    )


async def _breakers(runtime: Runtime) -> BackendBreakers:
    settings = runtime.settings
    names = breaker_names(settings)
    rules = BreakerRules(**settings.breaker.model_dump())
    breakers = BackendBreakers(rules, names, runtime.ledger, SqlBreakerStore(runtime.db))
    await breakers.load()
    return breakers


async def _prepare(runtime: Runtime) -> None:
    """Schema (SQLite upgrades itself; PostgreSQL is upgraded by the operator) and the
    mapped table."""
    if runtime.db.is_sqlite:
        await migrate.upgrade(runtime.db)
    else:
        await migrate.require_current(runtime.db)
    await runtime.instances.check()


async def _wait_for_database(runtime: Runtime, signals: StopSignals) -> bool:
    """Prepare, retrying while the database is unreachable; False if stopped meanwhile."""
    interval = runtime.settings.detection.interval
    logged = False
    while not signals.requested.is_set():
        try:
            await _prepare(runtime)
            if logged:
                log.info("database_available_again")
            return True
        except StoreUnavailable as exc:
            if not logged:
                log.error("database_unavailable_at_start", error=str(exc))
                logged = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(signals.requested.wait(), timeout=interval)
    return False
