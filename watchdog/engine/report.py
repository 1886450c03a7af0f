"""What one cycle saw and did: the daemon logs it, the metrics and health read it, and
the tests assert on it. Nobody reaches into the engine for its guards or breakers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from watchdog.core.breaker import BreakerSnapshot
from watchdog.core.model import Action, Unjudgeable


@dataclass(slots=True)
class CycleReport:
    now: datetime
    unhealthy: int
    monitored: int = 0
    next_deadline: float | None = None  # seconds until a healthy instance could turn stale
    unjudgeable: tuple[Unjudgeable, ...] = ()  # rows that cannot be judged
    rows_total: int | None = None  # the table's rows, when this cycle's scan counted them
    open_by_state: dict[str, int] = field(default_factory=dict)
    opened: int = 0
    acted: int = 0
    exhausted: int = 0
    resolved: int = 0
    actions: list[tuple[str, Action, int]] = field(default_factory=list)
    brake: bool = False  # the mass-failure brake holds (or, in a dry run, would hold)
    breakers: tuple[BreakerSnapshot, ...] = ()  # each backend's breaker after the cycle
    queued: dict[str, int] = field(default_factory=dict)  # calls waiting for their pace
    backlog: int = 0  # openings and actions left for the next cycle (see CYCLE_BUDGET)
