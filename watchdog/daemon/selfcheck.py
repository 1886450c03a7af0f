"""The daemon watching itself: is its loop alive, is it ready (the health rules, pure),
its own memory against `[daemon] memory_limit_mb`, and what each cycle tells the metrics.

Memory: a long-running watchdog that slowly leaks is a frozen instance waiting to happen,
so it warns at `WARNING_FRACTION` of the limit and logs a critical event at
`CRITICAL_FRACTION`. Only changes of level are logged, never every check, with a little
hysteresis so a reading hovering on a threshold does not log at every check. Tests
inject `read_rss`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any, Final

import psutil

from watchdog.daemon.metrics import Metrics
from watchdog.engine.report import CycleReport
from watchdog.masking import mask_urls_in
from watchdog.observability import get_logger

# ----------------------------------------------------------------- the health rules

ALIVE_INTERVALS: Final = 3.0  # the loop is alive while its last attempt is this recent


def liveness(since_attempt: float, interval: float, slack: float = 0.0) -> bool:
    """Whether a loop whose last cycle attempt (or, before the first, its start) was
    `since_attempt` seconds ago is alive. `slack` covers a cycle that may legitimately
    block meanwhile, e.g. the database timeout."""
    return since_attempt <= ALIVE_INTERVALS * interval + slack


def readiness(
    database_ok: bool, since_good: float | None, max_age: float, database_error: str = ""
) -> tuple[bool, str]:
    """`HealthSource.ready` from its two facts: the database answered the last cycle,
    and the last good cycle was `since_good` seconds ago (None: none yet)."""
    if not database_ok:
        detail = f": {mask_urls_in(database_error)}" if database_error else ""
        return False, f"database unreachable{detail}"
    if since_good is None:
        return False, "no good cycle yet"
    if since_good > max_age:
        return False, f"last good cycle {since_good:.0f}s ago (limit {max_age:g}s)"
    return True, "ok"


# -------------------------------------------------------------------------- memory

log = get_logger(component="memory")

WARNING_FRACTION = 0.80
CRITICAL_FRACTION = 0.95
HYSTERESIS = 0.02  # a level is left only this fraction of the limit below its threshold

MIB = 2**20


class MemoryLevel(StrEnum):
    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"


def process_rss() -> int:
    """This process's resident set size in bytes."""
    return int(psutil.Process().memory_info().rss)


class MemoryWatch:
    """The daemon's RSS against `limit_bytes`; `check()` reads it and logs level changes."""

    def __init__(
        self,
        limit_bytes: int,
        read_rss: Callable[[], int] = process_rss,
        *,
        warning: float = WARNING_FRACTION,
        critical: float = CRITICAL_FRACTION,
        hysteresis: float = HYSTERESIS,
    ) -> None:
        if limit_bytes <= 0:
            raise ValueError(f"memory limit must be positive, got {limit_bytes!r}")
        if not 0 < warning < critical:
            raise ValueError(f"need 0 < warning < critical, got {warning!r}, {critical!r}")
        if not 0 <= hysteresis < warning:
            raise ValueError(f"need 0 <= hysteresis < warning, got {hysteresis!r}")
        self.limit_bytes = limit_bytes
        self._read_rss = read_rss
        self._warning = warning * limit_bytes
        self._critical = critical * limit_bytes
        self._slack = hysteresis * limit_bytes
        self._rss = 0
        self._level = MemoryLevel.OK

    @property
    def rss(self) -> int:
        """The last reading in bytes (0 before the first check)."""
        return self._rss

    @property
    def level(self) -> MemoryLevel:
        return self._level

    def check(self) -> MemoryLevel:
        """Read the RSS, update the level and log when the level changed."""
        rss = int(self._read_rss())
        level = self._classify(rss)
        self._rss = rss
        if level is not self._level:
            self._level = level
            self._log_change(level)
        return level

    def _classify(self, rss: int) -> MemoryLevel:
        """The level for `rss`; a level is kept until the reading falls clearly below it."""
        current = self._level
        critical_at = self._critical - (self._slack if current is MemoryLevel.CRITICAL else 0)
        if rss >= critical_at:
            return MemoryLevel.CRITICAL
        keep_warning = current is not MemoryLevel.OK
        warning_at = self._warning - (self._slack if keep_warning else 0)
        if rss >= warning_at:
            return MemoryLevel.WARNING
        return MemoryLevel.OK

    def _log_change(self, level: MemoryLevel) -> None:
        fields = {
            "rss_mb": round(self._rss / MIB, 1),
            "limit_mb": round(self.limit_bytes / MIB, 1),
            "percent": round(100 * self._rss / self.limit_bytes, 1),
        }
        if level is MemoryLevel.CRITICAL:
            log.error("memory_critical", **fields)
        elif level is MemoryLevel.WARNING:
            log.warning("memory_warning", **fields)
        else:
            log.info("memory_ok_again", **fields)

    @classmethod
    def from_megabytes(
        cls, limit_mb: float, read_rss: Callable[[], int] = process_rss
    ) -> MemoryWatch:
        """A watch for `[daemon] memory_limit_mb` (MiB)."""
        return cls(int(limit_mb * MIB), read_rss)


# ---------------------------------------------------------------------- the monitor


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
        self._memory.check()  # logs when the daemon's own RSS crosses a level of its limit
        self.metrics.set_rss(self._memory.rss)

    def good(self, report: CycleReport | None, duration: float, leader: bool) -> None:
        """After a good cycle (report) or a healthy standby tick (None)."""
        self._last_good, self._outage = time.monotonic(), None
        self.metrics.set_leader(leader)
        if report is None:
            return
        self.metrics.observe_cycle(report, duration, report.monitored, report.open_by_state)
        self.metrics.set_brake(report.brake)
        self.metrics.set_breakers(report.breakers)

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
