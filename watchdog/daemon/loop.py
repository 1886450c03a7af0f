"""The long-running process: APScheduler drives the cycle; signals stop it cleanly.

Shutdown is an event: the first SIGTERM/SIGINT stops new cycles and new actions, lets
in-flight actions finish within `shutdown_timeout` and records their outcomes; a
second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from watchdog.core.errors import StoreError, StoreUnavailable, WatchdogError
from watchdog.daemon.leadership import Leadership
from watchdog.daemon.sdnotify import Notifier, SystemdHeartbeat
from watchdog.daemon.selfcheck import DaemonMonitor
from watchdog.daemon.unjudged import UnjudgeableLog
from watchdog.engine.cycle import Engine
from watchdog.engine.report import CycleReport
from watchdog.observability import get_logger

log = get_logger(component="daemon")

# Wake this long after a deadline, so the instance is past its threshold, not on it.
_PAST_THE_DEADLINE = 0.02


class CycleRunner:
    """Runs one cycle at a time and turns its failures into log lines, never crashes."""

    def __init__(
        self,
        engine: Engine,
        heartbeat: SystemdHeartbeat | None = None,
        leadership: Leadership | None = None,
        monitor: DaemonMonitor | None = None,
    ) -> None:
        self._engine = engine
        self._heartbeat = heartbeat
        self.leadership = leadership
        self.monitor = monitor
        # Called with the seconds until the soonest healthy instance could turn stale.
        self.wake: Callable[[float], None] | None = None
        self._lock = asyncio.Lock()
        self._outage: str | None = None
        self.last_report: CycleReport | None = None
        self.good_cycles = 0
        self._unjudgeable = UnjudgeableLog()

    async def tick(self) -> bool:
        if self._lock.locked():
            return False  # the previous cycle is still running; skip, do not queue
        async with self._lock:
            return await self._run()

    async def _run(self) -> bool:
        started = time.monotonic()
        if self.monitor is not None:
            self.monitor.attempt()
        try:
            if not await self._lead():
                return self._standby_tick()
            report = await self._engine.run_cycle()
            if self.leadership is not None:
                await self.leadership.good_cycle()
        except StoreError as exc:
            # Wherever it is seen first (the leader lock, the scan, a write): while our
            # database was away, the application's heartbeat writers may have been too.
            self._engine.database_lost()
            self._enter_outage(str(exc))
            if self._heartbeat is not None:
                self._heartbeat.on_handled_outage()
            return False
        except Exception:
            log.exception("cycle_failed")
            return False
        self._after_good_cycle(report, time.monotonic() - started)
        return True

    def _after_good_cycle(self, report: CycleReport, duration: float) -> None:
        self._leave_outage()
        self._unjudgeable.observe(report)
        if self.monitor is not None:
            self.monitor.good(report, duration, leader=True)
        self.last_report, self.good_cycles = report, self.good_cycles + 1
        if self.wake is not None and report.backlog:
            self.wake(0.0)  # work left over (a mass freeze): the next cycle comes at once
        elif self.wake is not None and report.next_deadline is not None:
            # The deadline counts from the scan, near the cycle's start: a cycle slowed by
            # a recovery storm must not push the wake back by its own length.
            self.wake(report.next_deadline + _PAST_THE_DEADLINE - duration)
        if self._heartbeat is not None:
            self._heartbeat.on_good_cycle()
        if report.opened or report.acted or report.resolved or report.exhausted:
            log.info(
                "cycle",
                unhealthy=report.unhealthy,
                unjudgeable=len(report.unjudgeable),
                opened=report.opened,
                acted=report.acted,
                resolved=report.resolved,
                exhausted=report.exhausted,
                backlog=report.backlog,
            )

    async def _lead(self) -> bool:
        """True when this node acts; a standby only keeps its node row fresh."""
        if self.leadership is None:
            return True
        if await self.leadership.ensure():
            return True
        await self.leadership.check_in()
        return False

    def _standby_tick(self) -> bool:
        self._leave_outage()
        if self.monitor is not None:
            self.monitor.good(None, 0.0, leader=False)
        if self._heartbeat is not None:
            self._heartbeat.on_good_cycle()  # a healthy standby is ready, and alive
        return True

    def _enter_outage(self, error: str) -> None:
        if self.monitor is not None:
            self.monitor.outage(error)
        if self._outage is None:  # log the outage once, not once a cycle
            log.error("database_unavailable", error=error)
        self._outage = error

    def _leave_outage(self) -> None:
        if self._outage is not None:
            log.info("database_available_again")
        self._outage = None

    async def idle(self, timeout: float) -> None:
        """Wait until no cycle is running (bounded)."""
        try:
            async with asyncio.timeout(timeout), self._lock:
                return
        except TimeoutError:
            log.warning("cycle_still_running_at_shutdown")


class StopSignals:
    """SIGTERM and SIGINT for the whole life of the process, start-up included: the first
    asks for a clean stop (listeners run, then `requested` is set); a second exits at once.
    """

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self._listeners: list[Callable[[], object]] = []

    def on_stop(self, listener: Callable[[], object]) -> None:
        self._listeners.append(listener)

    def request(self) -> None:
        if self.requested.is_set():
            log.warning("second_signal_exiting_now")
            os._exit(1)
        log.info("stopping")
        for listener in self._listeners:
            listener()
        self.requested.set()

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request)
        try:
            yield self
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


class SideJob:
    """Periodic work beside the cycle (alert delivery); its failures are logged, never fatal.
    A run in progress at shutdown is let finish, like a cycle (see `idle`)."""

    def __init__(self, name: str, every: float, run: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self.every = every
        self.run = run
        self._running: asyncio.Task[object] | None = None
        # Told when the run could not reach the database (the daemon starts a grace).
        self.on_unavailable: Callable[[], None] | None = None

    async def guarded(self) -> None:
        self._running = asyncio.current_task()
        try:
            await self.run()
        except WatchdogError as exc:
            if isinstance(exc, StoreUnavailable) and self.on_unavailable is not None:
                self.on_unavailable()
            log.warning("side_job_failed", job=self.name, error=str(exc))
        except Exception:
            log.exception("side_job_crashed", job=self.name)
        finally:
            self._running = None

    async def idle(self, timeout: float) -> bool:
        """Wait for the run in progress, if any; False if it outlasted `timeout`."""
        running = self._running
        if running is None:
            return True
        done, _pending = await asyncio.wait({running}, timeout=timeout)
        if not done:
            log.warning("side_job_still_running_at_shutdown", job=self.name)
        return bool(done)


class Daemon:
    def __init__(
        self,
        engine: Engine,
        interval: float,
        shutdown_timeout: float,
        notifier: Notifier | None = None,
        leadership: Leadership | None = None,
        monitor: DaemonMonitor | None = None,
        side_jobs: Sequence[SideJob] = (),
        signals: StopSignals | None = None,
    ) -> None:
        self._engine = engine
        self._side_jobs = side_jobs
        for job in side_jobs:
            job.on_unavailable = engine.database_lost
        self._interval = interval
        self._shutdown_timeout = shutdown_timeout
        self._notifier = notifier or Notifier()
        self._own_signals = signals is None
        self._signals = signals or StopSignals()
        self._signals.on_stop(self._notifier.stopping)
        self._signals.on_stop(engine.stop_acting)
        self.cycles = CycleRunner(engine, SystemdHeartbeat(self._notifier), leadership, monitor)

    def request_stop(self) -> None:
        self._signals.request()

    async def run(self, on_started: Callable[[], Awaitable[None]] | None = None) -> int:
        with contextlib.ExitStack() as stack:
            if self._own_signals:
                stack.enter_context(self._signals.installed())
            if self._signals.requested.is_set():
                return await self._finish()  # asked to stop during start-up
            scheduler = self._scheduler()
            scheduler.start()
            self.cycles.wake = lambda seconds: _wake_in(scheduler, seconds)
            log.info("started", interval=self._interval, pid=os.getpid())
            try:
                if on_started is not None:
                    await on_started()
                await self._signals.requested.wait()
                # No new runs; the cycle and side jobs in progress finish (not cancelled).
                scheduler.pause()
                return await self._finish()  # a second signal during this exits at once
            finally:
                # Cancels whatever outlasted the shutdown bound.
                scheduler.shutdown(wait=False)

    def _scheduler(self) -> AsyncIOScheduler:
        scheduler = AsyncIOScheduler(timezone=UTC)
        scheduler.add_job(
            self.cycles.tick,
            "interval",
            seconds=self._interval,
            next_run_time=datetime.now(UTC),
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            id="cycle",
        )
        for job in self._side_jobs:
            scheduler.add_job(
                job.guarded,
                "interval",
                seconds=job.every,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
                id=job.name,
            )
        return scheduler

    async def _finish(self) -> int:
        """Let the running cycle, side jobs and in-flight actions finish, within one
        shared bound."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._shutdown_timeout

        def remaining() -> float:
            return max(0.0, deadline - loop.time())

        await self.cycles.idle(remaining())
        for job in self._side_jobs:
            await job.idle(remaining())
        finished = await self._engine.drain(remaining())
        if not finished:
            log.warning("actions_still_in_flight_at_shutdown")
        await self._engine.save_breakers()
        if self.cycles.leadership is not None:
            await self.cycles.leadership.stop()
        log.info("stopped", clean=finished)
        return 0


async def run_once(
    engine: Engine, drain_timeout: float, leadership: Leadership | None = None
) -> int:
    """One cycle, wait for its actions, exit 0 when the cycle itself succeeded.

    With another watchdog leading, this node only checks in and acts on nothing."""
    runner = CycleRunner(engine, leadership=leadership)
    ok = await runner.tick()
    await engine.drain(drain_timeout)
    await engine.save_breakers()
    if leadership is not None:
        if not leadership.is_leader:
            log.warning("another watchdog leads: this run took no action")
        await leadership.stop()
    return 0 if ok else 1


def _wake_in(scheduler: AsyncIOScheduler, seconds: float) -> None:
    """Run the next cycle at the next deadline when that comes before the next tick."""
    job = scheduler.get_job("cycle")
    if job is None:
        return
    at = datetime.now(UTC) + timedelta(seconds=max(seconds, 0.05))
    if job.next_run_time is None or at < job.next_run_time:
        job.modify(next_run_time=at)
