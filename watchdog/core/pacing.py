"""Pacing: actions per second with a burst, so that a storm of recoveries does not flood
the application the watchdog protects. A pure token bucket (GCRA): time is passed in."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenBucket:
    """`rate` actions per second, `burst` of them at once after a quiet spell (0: one
    second's worth). `reserve(now)` books the next free slot and returns when it is, on
    the same (monotonic) clock as `now`: now itself while the burst lasts, then one slot
    every 1/rate seconds."""

    rate: float
    burst: int = 0
    _due: float | None = field(default=None, init=False)  # when the booked slots are spent

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError(f"a pace needs a positive rate, got {self.rate!r}")
        if self.burst < 0:
            raise ValueError(f"burst must be 0 or more, got {self.burst!r}")
        if self.burst == 0:
            self.burst = max(1, math.ceil(self.rate))

    def reserve(self, now: float) -> float:
        interval = 1.0 / self.rate
        due = now if self._due is None else max(self._due, now)
        at = max(now, due - (self.burst - 1) * interval)
        self._due = due + interval
        return at
