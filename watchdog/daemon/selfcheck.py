"""What the daemon knows about itself, for the health endpoint and Prometheus: when its
loop last ran, when it last had a good cycle, whether its database is reachable, its own
memory, and the metrics each cycle updates.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from watchdog.daemon.memory import MemoryWatch
from watchdog.daemon.metrics import Metrics
from watchdog.daemon.probes import liveness, readiness
from watchdog.engine.cycle import CycleReport, Engine


class DaemonMonitor:
    def __init__(
        self,
        metrics: Metrics,
        memory: MemoryWatch,
        *,
        interval: float,
        slack: float,
        ready_max_age: float,
        status: Callable[[], Awaitable[dict[str, Any]]],
    ) -> None:
        self.metrics = metrics
        self._memory = memory
        self._interval = interval
        self._slack = slack
        self._ready_max_age = ready_max_age
        self._status = status
        self._started = time.monotonic()
        self._last_attempt: float | None = None
        self._last_good: float | None = None
        self._outage: str | None = None

    # --------------------------------------------------------------- the loop

    def attempt(self) -> None:
        self._last_attempt = time.monotonic()
        self._memory.check()  # logs when the daemon's own RSS crosses 80 % or 95 % of its limit
        self.metrics.set_rss(self._memory.rss)

    def good(
        self, report: CycleReport | None, duration: float, engine: Engine, leader: bool
    ) -> None:
        """After a good cycle (report) or a healthy standby tick (None)."""
        self._last_good, self._outage = time.monotonic(), None
        self.metrics.set_leader(leader)
        if report is None:
            return
        self.metrics.observe_cycle(report, duration, report.monitored, report.open_by_state)
        self.metrics.set_brake(engine.guards.braking)
        if engine.breakers is not None:
            self.metrics.set_breakers(engine.breakers.board.snapshots())

    def outage(self, error: str) -> None:
        self._outage = error

    # ------------------------------------------------------- the health source

    def alive(self) -> bool:
        since = time.monotonic() - (self._last_attempt or self._started)
        return liveness(since, self._interval, slack=self._slack)

    def ready(self) -> tuple[bool, str]:
        since_good = time.monotonic() - self._last_good if self._last_good else None
        return readiness(self._outage is None, since_good, self._ready_max_age, self._outage or "")

    async def status(self) -> dict[str, Any]:
        return await self._status()
