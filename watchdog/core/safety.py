"""Pure rules that keep the watchdog from making an outage worse: the mass-failure brake,
restart budgets and flapping. Functions of their arguments only; time is passed in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class SafetyRules:
    process_restarts_per_process: int = 3
    process_restart_window: float = 1800.0
    fleet_restarts: int = 6
    fleet_restart_window: float = 3600.0
    flapping_incidents: int = 4
    flapping_window: float = 3600.0
    brake_min_unhealthy: int = 2
    brake_fraction: float = 0.5
    collateral_fraction: float = 0.5  # 1.0: a process restart is never held


def brake_engaged(unhealthy: int, monitored: int, rules: SafetyRules) -> bool:
    """More than `brake_min_unhealthy` and at least `brake_fraction` of the monitored fleet
    unhealthy at once: the cause is shared (the database, the network, our own view)."""
    if monitored <= 0 or unhealthy <= rules.brake_min_unhealthy:
        return False
    return unhealthy >= rules.brake_fraction * monitored


def blast_radius_holds(healthy: int, monitored: int, rules: SafetyRules) -> bool:
    """A process restart would take down more healthy instances than the share it may:
    more than `collateral_fraction` of the monitored instances the process hosts are
    healthy. At 1.0 nothing is ever held."""
    if rules.collateral_fraction >= 1.0 or monitored <= 0:
        return False
    return healthy > rules.collateral_fraction * monitored


@dataclass(frozen=True, slots=True)
class Restart:
    """One process restart the watchdog started (shared restarts count once)."""

    process: str
    at: datetime


def budget_returns_at(
    history: Iterable[Restart], process: str, now: datetime, rules: SafetyRules
) -> datetime | None:
    """None when `process` may be restarted now; otherwise when the budget allows it again."""
    per_process = timedelta(seconds=rules.process_restart_window)
    fleet = timedelta(seconds=rules.fleet_restart_window)
    mine = sorted(r.at for r in history if r.process == process and now - r.at < per_process)
    everyone = sorted(r.at for r in history if now - r.at < fleet)
    waits: list[datetime] = []
    if len(mine) >= rules.process_restarts_per_process:
        waits.append(mine[len(mine) - rules.process_restarts_per_process] + per_process)
    if len(everyone) >= rules.fleet_restarts:
        waits.append(everyone[len(everyone) - rules.fleet_restarts] + fleet)
    return max(waits) if waits else None


def is_flapping(incidents_in_window: int, rules: SafetyRules) -> bool:
    """`incidents_in_window` counts the new incident too."""
    return incidents_in_window >= rules.flapping_incidents
