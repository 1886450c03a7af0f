"""The system's monotonic clock, the one `Clock` the daemon runs on: seconds for
measuring durations and pacing. Wall time comes from the database clock, never from here."""

from __future__ import annotations

import time


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()
