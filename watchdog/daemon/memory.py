"""The daemon's own memory: its resident set size against a configured limit.

A long-running watchdog that slowly leaks is a frozen instance waiting to happen, so it
watches itself: a warning at 80 % of `[daemon] memory_limit_mb`, a critical event at
95 %. Only changes of level are logged, never every check, so a daemon sitting at 85 %
says so once rather than once a cycle. A little hysteresis keeps a reading that hovers
on a threshold from logging at every check.

The logic is pure given the reader: tests inject `read_rss`.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

import psutil

from watchdog.observability import get_logger

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
