"""`watchdogctl run`: open the stores, check the schema, build the engine, run.

The daemon never gives up on its database at start: while it is unreachable it logs
once, waits and tries again (systemd sees no READY yet); a schema that is wrong is an
operator's problem and exits 1 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import signal
import socket
from datetime import UTC, datetime

from watchdog.breaker import BreakerRules
from watchdog.circuit import BackendBreakers
from watchdog.config import Settings
from watchdog.daemon import Daemon, run_once
from watchdog.engine import Engine
from watchdog.errors import StoreUnavailable
from watchdog.guards import Guards
from watchdog.leadership import LeaderLock, Leadership, NodeIdentity
from watchdog.model import Action
from watchdog.observability import emit_audit, get_logger
from watchdog.safety import SafetyRules
from watchdog.store import migrate
from watchdog.store.breakers import SqlBreakerStore
from watchdog.store.fleet import SqlFleetState
from watchdog.store.locks import PgAdvisoryLock, SqliteFileLock
from watchdog.store.nodes import Node, SqlNodes
from watchdog.wiring import MonotonicClock, Runtime, open_recoveries, open_runtime, sqlite_path

log = get_logger(component="runner")


async def run_daemon(settings: Settings, *, once: bool, dry_run: bool) -> int:
    async with open_runtime(settings, emit_audit) as runtime:
        if once:
            await _prepare(runtime, dry_run)
        elif not await _wait_for_database(runtime, dry_run):
            return 0  # stopped while waiting
        breakers = await _breakers(runtime)
        leadership = await _leadership(runtime, breakers, dry_run)
        async with open_recoveries(runtime) as recoveries:
            engine = Engine(
                runtime.instances,
                runtime.ledger,
                recoveries,
                settings.escalation.rules(),
                MonotonicClock(),
                dry_run=dry_run,
                max_concurrent_actions=settings.daemon.max_concurrent_actions,
                guards=_guards(runtime, startup_grace=not once),
                breakers=breakers,
                fence=leadership.fence,
            )
            if once:
                return await run_once(engine, settings.daemon.shutdown_timeout, leadership)
            daemon = Daemon(
                engine,
                settings.detection.interval,
                settings.daemon.shutdown_timeout,
                leadership=leadership,
            )
            return await daemon.run()


async def _leadership(runtime: Runtime, breakers: BackendBreakers, dry_run: bool) -> Leadership:
    """Register this node; on SQLite refuse to start next to another daemon at once."""
    settings = runtime.settings
    me = NodeIdentity(
        settings.ha.node_id or f"{socket.gethostname()}:{os.getpid()}",
        socket.gethostname(),
        os.getpid(),
    )
    path = sqlite_path(settings.database.url)
    lock: LeaderLock
    if runtime.db.is_sqlite and path is not None:
        lock = SqliteFileLock(path)
        await lock.acquire()  # raises ConfigError naming the other daemon's pid
    else:
        lock = PgAdvisoryLock(
            settings.database.url, settings.ha.lock_key, settings.database.timeout
        )
    nodes = SqlNodes(runtime.db)
    now = await runtime.instances.now()
    await nodes.register(Node(me.node_id, me.host, me.pid, "standby", _version(), now), now)

    async def on_lead() -> None:
        # A predecessor may have died mid-action, and its breakers are ours now.
        if not dry_run:
            interrupted = await runtime.ledger.reconcile_interrupted()
            if interrupted:
                log.warning("interrupted_actions_reconciled", count=len(interrupted))
        await breakers.load()

    return Leadership(lock, nodes, runtime.ledger, me, lambda: datetime.now(UTC), on_lead)


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
    names = {
        Action.API_RESTART: "api",
        Action.DB_FLAG: "db_flag",
        Action.PROCESS_RESTART: settings.process.backend,
    }
    rules = BreakerRules(**settings.breaker.model_dump())
    breakers = BackendBreakers(rules, names, runtime.ledger, SqlBreakerStore(runtime.db))
    await breakers.load()
    return breakers


async def _prepare(runtime: Runtime, dry_run: bool) -> None:
    """Schema (SQLite upgrades itself; PostgreSQL is upgraded by the operator) and the
    mapped table."""
    if runtime.db.is_sqlite:
        await migrate.upgrade(runtime.db)
    else:
        await migrate.require_current(runtime.db)
    await runtime.instances.check()


async def _wait_for_database(runtime: Runtime, dry_run: bool) -> bool:
    """Prepare, retrying while the database is unreachable; False if stopped meanwhile."""
    interval = runtime.settings.detection.interval
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        logged = False
        while not stop.is_set():
            try:
                await _prepare(runtime, dry_run)
                if logged:
                    log.info("database_available_again")
                return True
            except StoreUnavailable as exc:
                if not logged:
                    log.error("database_unavailable_at_start", error=str(exc))
                    logged = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
        return False
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
