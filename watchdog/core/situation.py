"""Why the watchdog is or is not acting on one instance: what it does next, when, and
every guard that lets it or holds it. Pure: `watchdogctl status` and `explain` gather the
facts (`views.py`) and print what this decides, so they never say `due` for something
that will not run, and every "not acting" names the guard that holds it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from watchdog.core.model import ACTIONABLE_STATES, Action, Incident, IncidentState, Pause, Verdict
from watchdog.core.policy import BRAKED_ACTIONS, EscalationRules, is_paused, step_for_attempt

# The order a person reads them in: what must hold before anything else matters first.
GUARD_NAMES = (
    "readable",
    "no_leader",
    "grace",
    "pause",
    "in_flight",
    "exhausted",
    "brake",
    "blast_radius",
    "budget",
    "cycle_budget",
    "breaker",
)
_CLOSING = {
    Verdict.HEALTHY: "close (recovered)",
    Verdict.DISABLED: "close (dismissed)",
    Verdict.IGNORED: "close (dismissed)",
    Verdict.DELETED: "close (dismissed)",
}


@dataclass(frozen=True, slots=True)
class Guard:
    name: str
    ok: bool
    detail: str

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Facts:
    """What is known of one instance now (database clock)."""

    now: datetime
    verdict: Verdict | None  # None: the table could not be read
    why: str  # the verdict's rule, or why the table could not be read
    incident: Incident | None
    pause: Pause | None
    leader: str | None  # the node acting for the fleet; None: no daemon is acting
    leader_detail: str
    brake: bool = False
    grace_until: datetime | None = None
    in_flight: bool = False  # an action's intent is on record without its outcome
    queued_until: datetime | None = None  # that action waits for its backend's pace
    open_breakers: Mapping[Action, datetime | None] | None = None  # → next attempt
    backlog: Mapping[str, object] | None = None  # the leader's last cycle left work over


@dataclass(frozen=True, slots=True)
class Situation:
    next_action: str | None  # a rung, "detect", "close (...)", "exhaust", or None
    next_action_at: datetime | None
    guards: tuple[Guard, ...]
    queued_until: datetime | None = None  # the action in flight waits for its pace

    @property
    def retrying(self) -> bool:
        """The next action is an exhausted incident's last rung, tried again."""
        return self.next_action is not None and self.next_action.startswith(_RETRY)

    @property
    def blocked_by(self) -> list[str]:
        """The guards holding the next action; with none to take, only those that say why
        none is taken (the ladder ran out, the row cannot be read)."""
        held = [g.name for g in self.guards if not g.ok]
        if self.next_action is None:
            return [name for name in held if name in _WHY_NOTHING]
        return held


_WHY_NOTHING = frozenset({"exhausted", "readable"})
_RETRY = "retry "  # the next action of an exhausted incident: "retry process_restart"


def situate(facts: Facts, rules: EscalationRules) -> Situation:
    """The next action on the instance and every guard in the way."""
    action, at = _next(facts, rules)
    rung = _rung(action)
    guards = (
        _readable(facts),
        _no_leader(facts),
        _grace(facts),
        _pause(facts),
        _in_flight(facts),
        _exhausted(facts, action),
        _brake(facts, rung),
        _blast_radius(facts, rung),
        _budget(facts),
        _cycle_budget(facts, action, at),
        _breaker(facts, rung),
    )
    queued = facts.queued_until if facts.queued_until and facts.queued_until > facts.now else None
    return Situation(action, at, guards, queued if facts.in_flight else None)


def when(situation: Situation, now: datetime) -> str:
    """What will really happen next, in a few words (`status`'s WHEN column)."""
    blocked = {g.name: g for g in situation.guards if not g.ok}
    queued = situation.queued_until
    for name, text in (
        ("exhausted", "exhausted"),
        ("in_flight", f"queued, {_at(queued, now)}" if queued else "running now"),
        ("readable", "held: unjudgeable"),
    ):
        if name in blocked:
            return text
    if situation.next_action is None:
        return "-"
    if "no_leader" in blocked:
        return "held: no daemon acting"
    for name in ("pause", "grace", "blast_radius", "budget", "cycle_budget"):
        if name in blocked:
            return f"held: {blocked[name].detail}"
    if "brake" in blocked:
        return "held: brake"
    if "breaker" in blocked:
        return "skipped: breaker open"
    at = situation.next_action_at
    if at is None or at <= now:
        return "due"
    soon = _at(at, now)
    return f"exhausted; retry {soon}" if situation.retrying else soon


def _at(at: datetime, now: datetime) -> str:
    """`in 4s (12:00:31Z)`."""
    return f"in {human_delta((at - now).total_seconds())} ({stamp(at, seconds=True)})"


def stamp(at: datetime, *, seconds: bool = False) -> str:
    """A UTC time for people: `2026-11-29 12:00:31Z`, or `12:00:31Z` when `seconds`."""
    return at.strftime("%H:%M:%SZ" if seconds else "%Y-%m-%d %H:%M:%SZ")


def human_delta(seconds: float) -> str:
    """12s, 4m05s, 2h10m, 3d04h: short and sortable by eye."""
    whole = round(abs(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


# ----------------------------------------------------------------------- internals


def _next(facts: Facts, rules: EscalationRules) -> tuple[str | None, datetime | None]:
    incident, verdict = facts.incident, facts.verdict
    if verdict in _CLOSING and incident is not None and not incident.state.is_closed:
        return _CLOSING[verdict], facts.now
    if incident is not None and incident.state in ACTIONABLE_STATES:
        step = step_for_attempt(rules, incident.attempt + 1)
        return (str(step.action) if step else "exhaust"), incident.next_action_at or facts.now
    if incident is not None and incident.state is IncidentState.EXHAUSTED:
        if rules.exhausted_retry > 0 and incident.next_action_at is not None:
            return f"{_RETRY}{rules.ladder[-1].action}", incident.next_action_at
        return None, None
    if incident is None and verdict is Verdict.UNHEALTHY:
        step = step_for_attempt(rules, 1)
        return (f"detect, then {step.action}" if step else "detect"), facts.now
    return None, None


def _rung(action: str | None) -> Action | None:
    for rung in Action:
        if action is not None and action.endswith(str(rung)):
            return rung
    return None


def _readable(facts: Facts) -> Guard:
    if facts.verdict is None:
        return Guard("readable", False, f"the table could not be read: {facts.why}")
    if facts.verdict is Verdict.UNJUDGEABLE:
        return Guard("readable", False, facts.why)
    return Guard("readable", True, facts.why)


def _no_leader(facts: Facts) -> Guard:
    return Guard("no_leader", facts.leader is not None, facts.leader_detail)


def _grace(facts: Facts) -> Guard:
    until = facts.grace_until
    if until is not None and facts.now < until:
        return Guard("grace", False, f"grace until {stamp(until, seconds=True)}")
    return Guard("grace", True, "no grace in force")


def _pause(facts: Facts) -> Guard:
    pause = facts.pause
    if pause is not None and is_paused(pause, facts.now):
        detail = f"paused until {stamp(pause.until)} by {pause.actor} ({pause.reason})"
        return Guard("pause", False, detail)
    return Guard("pause", True, "not paused")


def _in_flight(facts: Facts) -> Guard:
    until = facts.queued_until
    if facts.in_flight and until is not None and until > facts.now:
        when_out = _at(until, facts.now)
        detail = f"queued by its backend's pace ([api] or [process] rate): goes out {when_out}"
        return Guard("in_flight", False, detail)
    if facts.in_flight:
        return Guard("in_flight", False, "an action is running now; its outcome is not in yet")
    return Guard("in_flight", True, "no action running")


def _exhausted(facts: Facts, action: str | None) -> Guard:
    incident = facts.incident
    if incident is None or incident.state is not IncidentState.EXHAUSTED:
        return Guard("exhausted", True, "attempts left")
    spent = f"all {incident.attempt} attempts spent"
    if action is not None:  # no final give-up: the last rung is tried again
        return Guard("exhausted", True, f"{spent}: the last rung again when due")
    return Guard("exhausted", False, f"{spent}: waits for recovery or `reset`")


def _brake(facts: Facts, rung: Action | None) -> Guard:
    if facts.brake and rung in BRAKED_ACTIONS:
        detail = f"mass-failure brake engaged: no {rung} until it is released"
        return Guard("brake", False, detail)
    state = "engaged (api_restart only)" if facts.brake else "released"
    return Guard("brake", True, f"brake {state}")


def _blast_radius(facts: Facts, rung: Action | None) -> Guard:
    incident = facts.incident
    if incident is None or rung is not Action.PROCESS_RESTART:
        return Guard("blast_radius", True, "no process restart next")
    if incident.approved_by:
        detail = f"approved by {incident.approved_by}: the next process restart goes through"
        return Guard("blast_radius", True, detail)
    held = incident.held
    if not held:
        return Guard("blast_radius", True, "not held")
    detail = (
        f"blast radius: {held.get('healthy')} of {held.get('monitored')} instances of "
        f"{held.get('process')} healthy; `watchdogctl approve {incident.instance_id}`"
    )
    return Guard("blast_radius", False, detail)


def _budget(facts: Facts) -> Guard:
    incident = facts.incident
    if (
        incident is not None
        and incident.state is IncidentState.SUPPRESSED
        and incident.next_action_at is not None
        and incident.next_action_at > facts.now
    ):
        until = stamp(incident.next_action_at)
        return Guard("budget", False, f"restart budget spent until {until}")
    return Guard("budget", True, "within the restart budget")


def _cycle_budget(facts: Facts, action: str | None, at: datetime | None) -> Guard:
    """A mass freeze left more than a cycle opens and starts (its budget) to the next
    cycles: an opening or action due now waits its turn, the least overdue first."""
    backlog = facts.backlog
    due = action is not None and not action.startswith("close") and (at is None or at <= facts.now)
    if backlog and backlog.get("present") and due and not facts.in_flight:
        detail = (
            f"cycle budget: since {_since(backlog.get('since'))} cycles leave work to the next "
            f"(at most {backlog.get('budget')} openings and starts each, the least overdue "
            f"first; {backlog.get('left')} left at first); the next cycle follows at once"
        )
        return Guard("cycle_budget", False, detail)
    return Guard("cycle_budget", True, "no backlog")


def _since(value: object) -> str:
    try:
        return stamp(datetime.fromisoformat(str(value)), seconds=True)
    except ValueError:
        return str(value)


def _breaker(facts: Facts, rung: Action | None) -> Guard:
    opened = facts.open_breakers or {}
    if rung is not None and rung in opened:
        next_at = opened[rung]
        until = f" until {stamp(next_at)}" if next_at else ""
        detail = f"the {rung} backend's breaker is open{until}: the attempt is spent, no call"
        return Guard("breaker", False, detail)
    return Guard("breaker", True, "breaker closed")
