"""The cycle runner wakes the next cycle at the next deadline, counted from the scan."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from watchdog.daemon.loop import CycleRunner
from watchdog.engine.report import CycleReport


class SlowEngine:
    """A cycle that takes `seconds` after its scan found a deadline `deadline` away."""

    def __init__(self, seconds: float, deadline: float, backlog: int = 0) -> None:
        self.seconds = seconds
        self.deadline = deadline
        self.backlog = backlog

    async def run_cycle(self) -> CycleReport:
        await asyncio.sleep(self.seconds)
        report = CycleReport(datetime.now(UTC), 0, next_deadline=self.deadline)
        report.backlog = self.backlog
        return report


async def test_a_slow_cycle_does_not_push_the_wake_back_by_its_own_length() -> None:
    runner = CycleRunner(SlowEngine(0.3, deadline=2.0))  # type: ignore[arg-type]
    wakes: list[float] = []
    runner.wake = wakes.append
    assert await runner.tick()
    (seconds,) = wakes
    assert seconds <= 2.0 - 0.3 + 0.05  # from the end of the cycle: what is left of the 2 s
    assert seconds > 1.0


async def test_a_cycle_that_left_work_over_wakes_the_next_at_once() -> None:
    runner = CycleRunner(SlowEngine(0.0, deadline=30.0, backlog=51))  # type: ignore[arg-type]
    wakes: list[float] = []
    runner.wake = wakes.append
    assert await runner.tick()
    assert wakes == [0.0]
