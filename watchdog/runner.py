"""`watchdogctl run`: open the stores, check the schema, build the engine, run."""

from __future__ import annotations

from watchdog.config import Settings
from watchdog.daemon import Daemon, run_once
from watchdog.engine import Engine
from watchdog.observability import emit_audit, get_logger
from watchdog.store import migrate
from watchdog.wiring import MonotonicClock, Runtime, open_recoveries, open_runtime

log = get_logger(component="runner")


async def run_daemon(settings: Settings, *, once: bool, dry_run: bool) -> int:
    async with open_runtime(settings, emit_audit) as runtime:
        await _prepare_schema(runtime)
        await runtime.instances.check()
        async with open_recoveries(runtime) as recoveries:
            engine = Engine(
                runtime.instances,
                runtime.ledger,
                recoveries,
                settings.escalation.rules(),
                MonotonicClock(),
                dry_run=dry_run,
                max_concurrent_actions=settings.daemon.max_concurrent_actions,
            )
            if once:
                return await run_once(engine, settings.daemon.shutdown_timeout)
            daemon = Daemon(engine, settings.detection.interval, settings.daemon.shutdown_timeout)
            return await daemon.run()


async def _prepare_schema(runtime: Runtime) -> None:
    """SQLite upgrades itself; a shared PostgreSQL is upgraded by the operator."""
    if runtime.db.is_sqlite:
        await migrate.upgrade(runtime.db)
    else:
        await migrate.require_current(runtime.db)
