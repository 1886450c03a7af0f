"""The pure policy: what is unhealthy, and what to do about it next.

Every function here is a function of its arguments: no I/O, no clock, no randomness
of its own (jitter is passed in). The SQL detection query in `store.instances` mirrors
`classify`, and a test checks that the two agree.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Collection, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from watchdog.core.model import (
    ACTIONABLE_STATES,
    Action,
    Finding,
    Incident,
    IncidentState,
    Pause,
    Reason,
)

# ---------------------------------------------------------------------------- rules


_ASCII_UPPER = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)


def status_key(status: str) -> str:
    """A status as the rules compare it: its ASCII letters upper-case (as the detection
    query's upper() in the C collation, and SQLite's, have it). Remembered: a fleet has a
    handful of statuses, each seen thousands of times a cycle after a mass failure."""
    key = _KEYS.get(status)
    if key is None:
        key = status.translate(_ASCII_UPPER)
        if len(_KEYS) < _KEYS_KEPT:
            _KEYS[status] = key
    return key


_KEYS: dict[str, str] = {}
_KEYS_KEPT = 1024  # statuses remembered; beyond, each is translated on every call


@dataclass(frozen=True, slots=True)
class DetectionRules:
    """Statuses compare case-insensitively: the lists are kept as `status_key`s."""

    stale_after: float = 90.0
    connecting_after: float = 120.0
    connecting_statuses: frozenset[str] = frozenset(
        {"CONNECTING", "RECONNECTING", "INITIALIZING", "LOADING"}
    )
    ignored_statuses: frozenset[str] = frozenset({"LOGOUT", "TOS_BLOCK", "BANNED"})
    max_clock_skew: float = 30.0  # a time further ahead than this is not believed

    def __post_init__(self) -> None:
        for name in ("connecting_statuses", "ignored_statuses"):
            upper = frozenset(status_key(s) for s in getattr(self, name))
            object.__setattr__(self, name, upper)


@dataclass(frozen=True, slots=True)
class LadderStep:
    action: Action
    attempts: int | None  # None: this step takes every attempt up to max_attempts
    settle: float  # seconds to wait after this action before judging it failed


@dataclass(frozen=True, slots=True)
class EscalationRules:
    ladder: tuple[LadderStep, ...] = (
        LadderStep(Action.API_RESTART, 2, 30.0),
        LadderStep(Action.DB_FLAG, 3, 30.0),
        LadderStep(Action.PROCESS_RESTART, None, 120.0),
    )
    max_attempts: int = 10
    backoff_factor: float = 1.5
    backoff_cap: float = 300.0
    jitter: float = 0.2  # up to this fraction of the delay is added at random
    reopen_window: float = 600.0  # a new incident this soon after the last continues its count
    exhausted_retry: float = 3600.0  # an exhausted incident's last rung again this often; 0: never

    def settle_of(self, action: Action) -> float:
        """How long the ladder waits after `action` before judging it (its first step's
        settle); 0 when the ladder does not take it."""
        return next((step.settle for step in self.ladder if step.action is action), 0.0)


# ------------------------------------------------------------------------ detection


class InstanceRow(NamedTuple):
    """One row of the application's table, with ages measured on the database clock.
    A named tuple: the scan builds up to thousands a cycle (cheaper to build than a
    frozen dataclass)."""

    instance_id: str
    enabled: bool
    status: str
    status_age: float
    heartbeat_age: float | None  # None: the instance never beat
    process: str | None = None


def classify(row: InstanceRow, rules: DetectionRules) -> Finding | None:
    """Return why `row` is unhealthy, or None when it is healthy or not ours to judge."""
    if not row.enabled:
        return None
    return judge_values(
        row.instance_id, row.status, row.status_age, row.heartbeat_age, row.process, rules
    )


def judge_values(
    instance_id: str,
    status: str,
    status_age: float,
    heartbeat_age: float | None,
    process: str | None,
    rules: DetectionRules,
) -> Finding | None:
    """`classify` of an enabled row given as its values: the scan judges up to thousands of
    rows a cycle without building a row for each."""
    key = status_key(status)
    if key in rules.ignored_statuses:
        return None
    stale = rules.stale_after
    if heartbeat_age is None:
        if status_age > stale:
            return Finding(instance_id, Reason.NEVER_BEAT, status, status_age, stale, process)
    elif heartbeat_age > stale:
        return Finding(instance_id, Reason.STALE_HEARTBEAT, status, heartbeat_age, stale, process)
    connecting = rules.connecting_after
    if key in rules.connecting_statuses and status_age > connecting:
        return Finding(
            instance_id, Reason.STUCK_CONNECTING, status, status_age, connecting, process
        )
    return None


def time_to_threshold(row: InstanceRow, rules: DetectionRules) -> float | None:
    """Seconds until a healthy, monitored `row` would cross a threshold if nothing changed."""
    if not row.enabled:
        return None
    return time_left(row.status, row.status_age, row.heartbeat_age, rules)


def time_left(
    status: str, status_age: float, heartbeat_age: float | None, rules: DetectionRules
) -> float | None:
    """`time_to_threshold` of an enabled row given as its values."""
    key = status_key(status)
    if key in rules.ignored_statuses:
        return None
    age = status_age if heartbeat_age is None else heartbeat_age
    left = rules.stale_after - age
    if key in rules.connecting_statuses:
        connecting = rules.connecting_after - status_age
        if connecting > 0 and (left <= 0 or connecting < left):
            return connecting
    return left if left > 0 else None


# The row is there but a value the rules need cannot be read: neither recovered nor
# dismissed (its health was not checked); see `store.instances` for what is reported.
UNREADABLE = "unreadable"


def unmonitored_reason(
    enabled: bool | None, status: str | None, rules: DetectionRules, *, readable: bool = True
) -> str | None:
    """Why an instance is outside the watchdog's care, or None when it is monitored.

    `enabled` None means the row no longer exists; `readable` False, that its status or
    timestamps cannot be read.
    """
    if enabled is None:
        return "deleted"
    if not enabled:
        return "disabled"
    if status is None or not readable:
        return UNREADABLE
    if status_key(status) in rules.ignored_statuses:
        return f"status {status}"
    return None


# ----------------------------------------------------------------------- escalation


def step_for_attempt(rules: EscalationRules, attempt: int) -> LadderStep | None:
    """The ladder step that attempt number `attempt` (1-based) takes, if any."""
    if attempt < 1 or attempt > rules.max_attempts:
        return None
    first = 1
    for step in rules.ladder:
        if step.attempts is None or attempt < first + step.attempts:
            return step
        first += step.attempts
    return None


def exponential(first: float, attempt: int, *, cap: float, factor: float = 2.0) -> float:
    """The wait after failed attempt `attempt` (1-based): first × factor^(attempt−1), at
    most `cap`. The one backoff: the ladder, alert delivery and retries all grow by it."""
    try:
        grown = first * factor ** max(0, attempt - 1)
    except OverflowError:
        return cap
    return min(grown, cap)


def backoff(rules: EscalationRules, step: LadderStep, attempt: int, jitter: float) -> float:
    """Seconds to wait after attempt `attempt`: settle × factor^(attempt−1), capped, plus jitter.

    `jitter` is a number in [0, 1) drawn by the caller.
    """
    cap = max(rules.backoff_cap, step.settle)
    base = exponential(step.settle, attempt, cap=cap, factor=rules.backoff_factor)
    return base * (1.0 + rules.jitter * jitter)


@dataclass(frozen=True, slots=True)
class Open:
    """Open an incident for a newly unhealthy instance (audited `detected`)."""

    finding: Finding
    carried_attempts: int  # attempts inherited from an incident closed within the reopen window
    continues: int | None  # id of that incident


@dataclass(frozen=True, slots=True)
class Act:
    """Take recovery action number `attempt` on an instance."""

    instance_id: str
    attempt: int
    action: Action
    delay: float  # seconds before the next attempt may follow this one
    finding: Finding
    retry: bool = False  # the ladder ran out: its last rung, tried again after a while


@dataclass(frozen=True, slots=True)
class Exhaust:
    """The ladder ran out: stop acting until recovery or an operator's reset."""

    instance_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Resolve:
    """The instance is healthy again: close its incident."""

    incident: Incident


@dataclass(frozen=True, slots=True)
class Dismiss:
    """The instance left the watchdog's care while unhealthy: close without recovery."""

    incident: Incident
    why: str


Decision = Open | Act | Exhaust | Resolve | Dismiss


@dataclass(frozen=True, slots=True)
class World:
    """Everything the policy needs to know, at one moment of the database clock."""

    now: datetime
    findings: Mapping[str, Finding]
    incidents: Mapping[str, Incident]  # open and exhausted incidents by instance id
    recent: Mapping[str, Incident]  # the last closed incident of newly unhealthy instances
    pauses: Mapping[str, Pause]  # by instance
    busy: AbstractSet[str] = frozenset()  # instances with an action still in flight
    # Instances whose row could not be read this cycle: neither acted on nor resolved.
    unjudged: Collection[str] = frozenset()
    unmonitored: Mapping[str, str] = field(default_factory=dict)  # id → why (disabled, ...)
    # Until then nobody is judged: heartbeat writers catch up after an outage or our start.
    grace_until: datetime | None = None
    brake: bool = False  # a fleet-wide failure: no db_flag or process_restart
    fleet_pauses: Sequence[Pause] = ()  # by selector: --process, --match, --all

    def pause_of(self, finding: Finding) -> Pause | None:
        return pause_of(self.pauses, self.fleet_pauses, finding.instance_id, finding.process)


# The rungs a fleet-wide failure must not take: they cannot fix a shared cause.
BRAKED_ACTIONS = frozenset({Action.DB_FLAG, Action.PROCESS_RESTART})


def decide(rules: EscalationRules, world: World, jitter: Callable[[], float]) -> list[Decision]:
    """The decisions for one cycle, in the order they must be applied."""
    # Decided in the tables' order and sorted by instance afterwards: a long outage keeps
    # thousands of findings whose next step is not due, and sorting those every cycle
    # would cost more than deciding them.
    findings, incidents, busy = world.findings, world.incidents, world.busy
    closing: list[tuple[str, Decision]] = []
    for instance_id in incidents.keys() - findings.keys() - busy:  # in C, not per incident
        incident = incidents[instance_id]
        why = world.unmonitored.get(instance_id)
        if instance_id in world.unjudged or why == UNREADABLE:
            continue  # health not checked is not health
        closing.append((instance_id, Resolve(incident) if why is None else Dismiss(incident, why)))
    decisions: list[Decision] = [d for _id, d in sorted(closing, key=_first)]
    now = world.now
    if world.grace_until is not None and now < world.grace_until:
        return decisions
    acting: list[tuple[str, tuple[Decision, ...]]] = []
    for instance_id, finding in findings.items():
        current = incidents.get(instance_id)
        if (
            current is not None
            and current.next_action_at is not None
            and current.next_action_at > now
            and current.state in ACTIONABLE_STATES
        ) or instance_id in busy:
            continue  # its next step is not due yet, or its action is still in flight
        made = _decide_one(rules, world, finding, jitter)
        if made:
            acting.append((instance_id, made))
    acting.sort(key=_first)
    decisions.extend(d for _id, made in acting for d in made)
    return decisions


def _first(pair: tuple[str, object]) -> str:
    return pair[0]


def _decide_one(
    rules: EscalationRules, world: World, finding: Finding, jitter: Callable[[], float]
) -> tuple[Decision, ...]:
    incident = world.incidents.get(finding.instance_id)
    opening: tuple[Decision, ...] = ()
    if incident is None:
        carried, continues = _carried_attempts(rules, world, finding.instance_id)
        opening = (Open(finding, carried, continues),)
        attempt, due = carried, True
    else:
        if incident.state is IncidentState.EXHAUSTED:
            return _retry_exhausted(rules, world, finding, incident)
        if incident.state not in ACTIONABLE_STATES:
            return ()
        attempt = incident.attempt
        due = incident.next_action_at is None or incident.next_action_at <= world.now
    if not due or is_paused(world.pause_of(finding), world.now):
        return opening
    step = step_for_attempt(rules, attempt + 1)
    if step is None:
        return (*opening, Exhaust(finding.instance_id, attempt))
    if world.brake and step.action in BRAKED_ACTIONS:
        return opening  # held back, not skipped: the attempt waits until the brake is released
    delay = backoff(rules, step, attempt + 1, jitter())
    return (*opening, Act(finding.instance_id, attempt + 1, step.action, delay, finding))


def _retry_exhausted(
    rules: EscalationRules, world: World, finding: Finding, incident: Incident
) -> tuple[Decision, ...]:
    """No final give-up: the last rung again once every `exhausted_retry` seconds, under
    every guard (a pause, the brake, the budgets, the breakers) like any attempt."""
    due = incident.next_action_at is not None and incident.next_action_at <= world.now
    if rules.exhausted_retry <= 0 or not due:
        return ()
    if is_paused(world.pause_of(finding), world.now):
        return ()
    last = rules.ladder[-1].action
    if world.brake and last in BRAKED_ACTIONS:
        return ()
    attempt = incident.attempt + 1
    return (Act(finding.instance_id, attempt, last, rules.exhausted_retry, finding, retry=True),)


def _carried_attempts(
    rules: EscalationRules, world: World, instance_id: str
) -> tuple[int, int | None]:
    last = world.recent.get(instance_id)
    if last is None or last.state is not IncidentState.RECOVERED or last.closed_at is None:
        return 0, None
    if world.now - last.closed_at > timedelta(seconds=rules.reopen_window):
        return 0, None
    return last.attempt, last.id


def is_paused(pause: Pause | None, now: datetime) -> bool:
    return pause is not None and pause.until > now


def pause_of(
    pauses: Mapping[str, Pause],
    fleet_pauses: Sequence[Pause],
    instance_id: str,
    process: str | None,
) -> Pause | None:
    """The pause holding an instance: its own, else the first fleet pause covering it."""
    own = pauses.get(instance_id)
    if own is not None:
        return own
    for pause in fleet_pauses:
        if pause.selector is not None and pause.selector.covers(instance_id, process):
            return pause
    return None
