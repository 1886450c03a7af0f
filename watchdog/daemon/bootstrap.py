"""`watchdogctl run`: open the stores, check the schema, build the engine, run.

The daemon never gives up on its database at start: while it is unreachable it logs
once, waits and tries again (systemd sees no READY yet); a schema that is wrong is an
operator's problem and exits 1 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.metadata
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from watchdog import views, wiring
from watchdog.clock import SystemClock
from watchdog.config import Settings, bearer_token
from watchdog.core.errors import StoreUnavailable
from watchdog.core.model import AuditRow
from watchdog.daemon.health import HealthServer
from watchdog.daemon.jobs import alert_jobs, hosts_job, reconcile_job, retention_jobs
from watchdog.daemon.leadership import Leadership, NodeIdentity
from watchdog.daemon.loop import Daemon, StopSignals, run_once
from watchdog.daemon.metrics import Metrics
from watchdog.daemon.reconcile import IntentReconciler
from watchdog.daemon.selfcheck import DaemonMonitor, MemoryWatch
from watchdog.engine.breakers import BackendBreakers
from watchdog.engine.cycle import Engine
from watchdog.engine.guards import Guards
from watchdog.engine.report import CycleReport
from watchdog.observability import emit_audit, get_logger
from watchdog.store import migrate
from watchdog.store.nodes import Node
from watchdog.web import Pages
from watchdog.wiring import (
    Runtime,
    open_recoveries,
    open_runtime,
)

log = get_logger(component="runner")


@dataclass(slots=True)
class OnceRecord:
    """What a `run --once` saw and did, for its summary on a terminal: the cycle's report
    (None: the cycle failed, or another watchdog leads) and every audit row written."""

    report: CycleReport | None = None
    audits: list[AuditRow] = field(default_factory=list)


class _RecordingEngine(Engine):
    """The engine of a `run --once` whose summary is wanted: it keeps its cycle's report."""

    record: OnceRecord | None = None

    async def run_cycle(self) -> CycleReport:
        report = await super().run_cycle()
        if self.record is not None:
            self.record.report = report
        return report


async def run_daemon(
    settings: Settings, *, once: bool, dry_run: bool, record: OnceRecord | None = None
) -> int:
    """The daemon, or one cycle with `once`; `record` (with `once`) is filled with what
    the cycle saw and did."""
    metrics = Metrics()

    def emit(row: AuditRow) -> None:
        emit_audit(row)
        metrics.observe_audit(row)
        if record is not None:
            record.audits.append(row)

    # Signals are ours from here on: a SIGTERM during start-up is a clean stop too.
    with StopSignals().installed() as signals:
        async with open_runtime(settings, emit) as runtime:
            if once:
                await _prepare(runtime)
                return await _run(
                    runtime, signals, once=True, dry_run=dry_run, monitor=None, record=record
                )
            monitor = _monitor(runtime, metrics)
            async with _health_server(settings, monitor, Pages(runtime)):
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
    record: OnceRecord | None = None,
) -> int:
    settings = runtime.settings
    breakers = await wiring.breakers(runtime)
    guards = wiring.guards(runtime, startup_grace=not once)
    live: set[int] = set()  # intents whose action is in flight here: never `interrupted`
    me = _identity(settings)
    reconciler = IntentReconciler(
        runtime.ledger,
        runtime.nodes.all,
        me.node_id,
        live,
        node_timeout=max(10.0, 3 * settings.detection.interval + settings.database.timeout),
        host=me.host,
    )
    leadership = await _leadership(runtime, me, breakers, reconciler, guards, dry_run)
    try:
        async with open_recoveries(runtime) as recoveries, alert_jobs(runtime, leadership) as jobs:
            engine = _RecordingEngine(
                runtime.instances,
                runtime.ledger,
                recoveries,
                settings.escalation.rules(),
                SystemClock(),
                dry_run=dry_run,
                max_concurrent_actions=settings.daemon.max_concurrent_actions,
                guards=guards,
                breakers=breakers,
                hosts=wiring.hosts(runtime, recoveries),
                pacers=wiring.pacers(settings),
                fence=leadership.fence,
                owner=me.node_id,
                live=live,
            )
            engine.record = record
            if once:
                signals.on_stop(engine.stop_acting)
                return await run_once(engine, settings.daemon.shutdown_timeout, leadership)
            # Everything alive now (libraries, compiled SQL, configuration) lives as long as
            # the process: out of the cyclic collector's way, each cycle's collections scan
            # only what cycles allocate.
            gc.freeze()
            if not dry_run:
                jobs.append(reconcile_job(reconciler, leadership, settings.detection.interval))
                jobs.append(hosts_job(engine, leadership, settings.detection.interval))
                jobs.extend(retention_jobs(runtime, leadership, signals))
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


def _monitor(runtime: Runtime, metrics: Metrics) -> DaemonMonitor:
    settings = runtime.settings
    return DaemonMonitor(
        metrics,
        MemoryWatch.from_megabytes(settings.daemon.memory_limit_mb),
        interval=settings.detection.interval,
        slack=settings.database.timeout * 3,
        ready_max_age=settings.health.ready_max_age,
        status=lambda: views.fleet_status(runtime),
    )


@contextlib.asynccontextmanager
async def _health_server(
    settings: Settings, monitor: DaemonMonitor, pages: Pages
) -> AsyncIterator[None]:
    """The health endpoint, when enabled: up before the database, so /readyz can say 503."""
    if not settings.health.enabled:
        yield
        return
    token = bearer_token("health.token_env", settings.health.token_env)
    server = HealthServer(settings.health, monitor, monitor.metrics, token, pages)
    await server.start()
    log.info("health_endpoint", host=settings.health.host, port=server.port)
    try:
        yield
    finally:
        await server.stop()


def _identity(settings: Settings) -> NodeIdentity:
    return NodeIdentity(
        settings.ha.node_id or f"{socket.gethostname()}:{os.getpid()}",
        socket.gethostname(),
        os.getpid(),
    )


async def _leadership(
    runtime: Runtime,
    me: NodeIdentity,
    breakers: BackendBreakers,
    reconciler: IntentReconciler,
    guards: Guards,
    dry_run: bool,
) -> Leadership:
    """Register this node; on SQLite refuse to start next to another daemon at once."""
    lock = await wiring.leader_lock(runtime, on_lost=lambda error: _lock_lost(guards, error))
    now = await runtime.instances.now()
    await runtime.nodes.register(Node(me.node_id, me.host, me.pid, "standby", _version(), now))

    async def on_lead() -> None:
        # A predecessor may have died mid-action, and its breakers are ours now.
        if not dry_run:
            await reconciler.on_lead()
        await breakers.load()

    return Leadership(lock, runtime.nodes, runtime.ledger, me, on_lead)


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
