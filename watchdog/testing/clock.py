"""A clock for tests: it moves only when told to."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
"""Where a `FakeClock` starts unless told otherwise."""


class FakeClock:
    """Wall time (`now`, aware UTC) and monotonic time that move only on `advance`."""

    def __init__(self, now: datetime = EPOCH, monotonic: float = 1000.0) -> None:
        if now.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self.now = now.astimezone(UTC)
        self._monotonic = monotonic

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by `seconds`."""
        if seconds < 0:
            raise ValueError(f"time only moves forward, got {seconds!r}")
        self.now += timedelta(seconds=seconds)
        self._monotonic += seconds
