"""What the status page shows, gathered from the database now (the views `status` and
`explain` use), plus the restart budgets left and the last hour's actions per minute."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from watchdog.core.model import AuditAction, AuditRow, Pause
from watchdog.core.policy import step_for_attempt
from watchdog.core.ports import AuditQuery
from watchdog.views import FleetView, explain_instance, fleet_view, node_record, status_records
from watchdog.wiring import Runtime, safety_rules

PER_PAGE = 100  # instances on one page
TIMELINE_MINUTES = 60
TRAIL_ROWS = 100  # audit rows on an instance's page
_RUNGS = (AuditAction.API_RESTART, AuditAction.DB_FLAG, AuditAction.PROCESS_RESTART)


@dataclass(frozen=True, slots=True)
class Budget:
    scope: str  # "fleet" or a process
    used: int
    allowed: int
    window: float  # seconds

    @property
    def left(self) -> int:
        return max(0, self.allowed - self.used)


@dataclass(frozen=True, slots=True)
class StatusPage:
    view: FleetView
    records: list[dict[str, Any]]  # this page's instances
    listed: int  # every listed instance
    paused: int  # of them, held by a pause
    page: int
    pages: int
    nodes: list[dict[str, Any]]
    budgets: list[Budget]
    fleet_pauses: list[Pause]
    timeline: dict[tuple[int, str, str], int]  # (minutes ago, rung, outcome) → actions
    max_attempts: int
    ladder: list[str]  # the rung of each attempt, 1..max_attempts


@dataclass(frozen=True, slots=True)
class InstancePage:
    explained: dict[str, Any]
    trail: list[AuditRow]
    ladder: list[str]


async def status_page(rt: Runtime, page: int) -> StatusPage:
    settings = rt.settings
    rules = settings.escalation.rules()
    view = await fleet_view(rt)
    records = status_records(view, rules)
    pages = max(1, -(-len(records) // PER_PAGE))
    page = min(max(1, page), pages)
    shown = records[(page - 1) * PER_PAGE : page * PER_PAGE]
    interval = settings.detection.interval
    return StatusPage(
        view=view,
        records=shown,
        listed=len(records),
        paused=sum(1 for r in records if r["state"] == "paused"),
        page=page,
        pages=pages,
        nodes=[node_record(n, view.now, interval) for n in view.nodes],
        budgets=await _budgets(rt, view.now),
        fleet_pauses=list(view.fleet_pauses),
        timeline=await _timeline(rt, view.now),
        max_attempts=rules.max_attempts,
        ladder=ladder_of(rt),
    )


async def instance_page(rt: Runtime, instance_id: str) -> InstancePage | None:
    """None when the instance is neither in the table nor in the watchdog's records."""
    explained = await explain_instance(rt, instance_id)
    if explained is None:
        return None
    trail = await rt.ledger.audit(AuditQuery(instance_id=instance_id, limit=TRAIL_ROWS))
    return InstancePage(explained, trail, ladder_of(rt))


def ladder_of(rt: Runtime) -> list[str]:
    """The rung each attempt takes, attempt 1 first."""
    rules = rt.settings.escalation.rules()
    steps = (step_for_attempt(rules, n) for n in range(1, rules.max_attempts + 1))
    return [str(step.action) for step in steps if step is not None]


async def _budgets(rt: Runtime, now: datetime) -> list[Budget]:
    """The fleet-wide restart budget, and each process's that restarts used lately."""
    rules = safety_rules(rt.settings)
    longest = max(rules.process_restart_window, rules.fleet_restart_window)
    history = await rt.fleet.recent_restarts(now - timedelta(seconds=longest))
    fleet_since = now - timedelta(seconds=rules.fleet_restart_window)
    process_since = now - timedelta(seconds=rules.process_restart_window)
    fleet = sum(1 for r in history if r.at >= fleet_since)
    per_process = Counter(r.process for r in history if r.at >= process_since)
    budgets = [Budget("fleet", fleet, rules.fleet_restarts, rules.fleet_restart_window)]
    budgets += [
        Budget(process, used, rules.process_restarts_per_process, rules.process_restart_window)
        for process, used in sorted(per_process.items())
    ]
    return budgets


async def _timeline(rt: Runtime, now: datetime) -> dict[tuple[int, str, str], int]:
    """Action outcomes of the last hour by minutes ago, rung and outcome (intents left out:
    each action counts once, when it ended)."""
    since = now - timedelta(minutes=TIMELINE_MINUTES)
    counts: Counter[tuple[int, str, str]] = Counter()
    for at, action, outcome in await rt.ledger.outcome_times(since, _RUNGS):
        ago = min(TIMELINE_MINUTES - 1, max(0, int((now - at).total_seconds() // 60)))
        counts[(ago, action, outcome)] += 1
    return dict(counts)
