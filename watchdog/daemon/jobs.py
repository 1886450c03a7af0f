"""The daemon's side jobs, declared in one place: what runs beside the cycle, on which
node, and how often. `loop.Daemon` schedules them (APScheduler) with the cycle; each is
guarded there, so a failing job is logged and tried again at its next turn.

- `alerts_feed`, `alerts_send` (every replica, `[alerts] interval`): audit rows to the
  outbox, exactly once; the outbox to the sinks.
- `reconcile` (the leader, every interval): intents left to a node that may still record
  them, looked at again.
- `hosts` (the leader, every interval): restarts of the processes hosting open incidents
  that this watchdog did not make, audited on the instances they host.
- `retention` (the leader, hourly and soon after taking the lead): history past
  `[retention]` deleted.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx

from watchdog import wiring
from watchdog.daemon.leadership import Leadership
from watchdog.daemon.loop import SideJob, StopSignals
from watchdog.daemon.reconcile import IntentReconciler
from watchdog.engine.cycle import Engine
from watchdog.wiring import Runtime

RETENTION_EVERY = 3600.0  # seconds between retention runs of the leader
RETENTION_CHECK = 60.0  # how soon after taking the lead the first run comes


@contextlib.asynccontextmanager
async def alert_jobs(runtime: Runtime, leadership: Leadership) -> AsyncIterator[list[SideJob]]:
    """Alert feeding and delivery, on every replica (both are safe concurrently)."""
    alerts = runtime.settings.alerts
    if not alerts.sinks:
        yield []
        return
    async with httpx.AsyncClient(follow_redirects=False) as client:
        feeder, sender = wiring.alert_senders(runtime, leadership.node_id, client)

        await feeder.feed()  # set the cursor now: events from the first cycle on are alerted

        async def send() -> None:
            await sender.send_due()

        async def feed() -> None:
            await feeder.feed()

        yield [
            SideJob("alerts_feed", alerts.interval, feed),
            SideJob("alerts_send", alerts.interval, send),
        ]


def reconcile_job(reconciler: IntentReconciler, leadership: Leadership, every: float) -> SideJob:
    """The leader looks again at intents left to a node that may still record them."""

    async def recheck() -> None:
        if leadership.is_leader:
            await reconciler.recheck()

    return SideJob("reconcile", max(every, 1.0), recheck)


def hosts_job(engine: Engine, leadership: Leadership, every: float) -> SideJob:
    """The leader looks for restarts it did not make of the processes it watches."""

    async def watch() -> None:
        if leadership.is_leader:
            await engine.watch_hosts()

    return SideJob("hosts", max(every, 1.0), watch)


def retention_jobs(runtime: Runtime, leadership: Leadership, signals: StopSignals) -> list[SideJob]:
    """The leader deletes history older than `[retention]` keeps (none when it keeps all)."""
    retention = wiring.retention(runtime)
    if retention is None:
        return []

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
