"""Domain types: frozen dataclasses, named tuples and enums shared by every layer.

Nothing here does I/O or reads a clock; times are always passed in.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any, NamedTuple


class Reason(enum.StrEnum):
    """Why an instance is judged unhealthy."""

    STALE_HEARTBEAT = "stale_heartbeat"
    NEVER_BEAT = "never_beat"
    STUCK_CONNECTING = "stuck_connecting"


class Action(enum.StrEnum):
    """A recovery rung of the escalation ladder."""

    API_RESTART = "api_restart"
    DB_FLAG = "db_flag"
    PROCESS_RESTART = "process_restart"


class AuditAction(enum.StrEnum):
    """The `action` column of an audit row."""

    DETECTED = "detected"
    API_RESTART = "api_restart"
    DB_FLAG = "db_flag"
    PROCESS_RESTART = "process_restart"
    RECOVERED = "recovered"
    DISMISSED = "dismissed"
    EXHAUSTED = "exhausted"
    PAUSED = "paused"
    RESUMED = "resumed"
    RESET = "reset"
    SUPPRESSED = "suppressed"  # a process restart held back: the restart budget is spent
    FLAPPING = "flapping"  # the instance failed again and again within an hour
    BRAKE_ENGAGED = "brake_engaged"  # fleet-wide failure: no db_flag or process_restart
    BRAKE_RELEASED = "brake_released"
    BREAKER_OPENED = "breaker_opened"
    BREAKER_CLOSED = "breaker_closed"
    LEADER_CHANGED = "leader_changed"  # this node took over acting for the fleet
    GRACE = "grace"  # after our start or our database's outage: nobody judged until then
    UNJUDGEABLE = "unjudgeable"  # rows the watchdog cannot judge appeared in the table
    UNJUDGEABLE_CLEARED = "unjudgeable_cleared"  # every row can be judged again
    BACKLOG = "backlog"  # a mass freeze left more than a cycle's budget to the next cycles
    BACKLOG_CLEARED = "backlog_cleared"  # every due opening and action was taken again
    RETENTION = "retention"  # the leader deleted history older than [retention] keeps
    EXHAUSTED_RETRY = "exhausted_retry"  # an exhausted incident's last rung, tried again
    HOST_RESTARTED = "host_restarted"  # the process hosting the instance got a new life
    HELD = "held"  # a process restart held: it would take down too many healthy instances
    APPROVED = "approved"  # an operator let one held process restart through


class Outcome(enum.StrEnum):
    """The `outcome` column of an audit row."""

    STARTED = "started"
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"
    INTERRUPTED = "interrupted"  # the watchdog died between intent and outcome


class IncidentState(enum.StrEnum):
    """Lifecycle of an incident row.

    OPEN → (EXHAUSTED) → RECOVERED | RESET | DISMISSED. Only OPEN incidents are acted
    on; EXHAUSTED ones wait for recovery or an operator's reset. DISMISSED: the instance
    left the watchdog's care (disabled, an ignored status, deleted) while unhealthy.
    """

    OPEN = "open"
    EXHAUSTED = "exhausted"
    SUPPRESSED = "suppressed"  # waiting for the restart budget; acted on like OPEN
    RECOVERED = "recovered"
    RESET = "reset"
    DISMISSED = "dismissed"

    @property
    def is_closed(self) -> bool:
        return self not in OPEN_STATES


# Not closed: still the instance's current incident, whatever waits on it.
OPEN_STATES = frozenset({IncidentState.OPEN, IncidentState.EXHAUSTED, IncidentState.SUPPRESSED})
# Those the ladder goes on with when their next attempt is due.
ACTIONABLE_STATES = frozenset({IncidentState.OPEN, IncidentState.SUPPRESSED})

FLEET = "*"  # the instance column of fleet-wide audit rows (brake, leader, retention, ...)


class Finding(NamedTuple):
    """One unhealthy instance as seen by one scan, judged by the database clock. A named
    tuple, as `policy.InstanceRow`: a scan after a mass failure builds thousands a cycle,
    and a frozen dataclass costs several times as much to build."""

    instance_id: str
    reason: Reason
    status: str
    age: float  # seconds since the last heartbeat or status change
    threshold: float  # the limit the age crossed (stale_after or connecting_after)
    process: str | None = None

    @property
    def overdue(self) -> float:
        """How long past its threshold the instance was when seen."""
        return max(0.0, self.age - self.threshold)


@dataclass(frozen=True, slots=True)
class Unjudgeable:
    """A row that cannot be judged: a value the watchdog cannot read, or an id it cannot
    address. Never acted on; reported instead."""

    instance_id: str | None  # None: the id itself is NULL
    column: str  # the mapped column name holding the bad value
    value: str | None  # the raw value, cut short; None: SQL NULL
    why: str
    fix: str  # what the operator or the application should change
    # Counted among the monitored rows (enabled, status not ignored): False when its
    # `enabled` or status is what cannot be read.
    monitored: bool = True

    @property
    def key(self) -> tuple[str | None, str]:
        return (self.instance_id, self.column)


@dataclass(frozen=True, slots=True)
class Scan:
    """The result of one detection query: the database's now and what is unhealthy."""

    now: datetime
    findings: Mapping[str, Finding]
    enabled_count: int = 0  # monitored instances: enabled, status not ignored
    next_deadline: float | None = None  # seconds until the next healthy one could turn stale
    unjudgeable: tuple[Unjudgeable, ...] = ()
    rows_total: int | None = None  # every row of the table, when this scan counted them
    ledger_revision: int | None = None  # the watchdog's incidents and pauses, read with it


@dataclass(frozen=True, slots=True)
class Census:
    """The application's table as the watchdog reads it now (for `status`): every row is
    healthy, unhealthy, unjudgeable, disabled or ignored; `monitored` counts those it
    looks after (enabled, status not ignored), as the mass-failure brake does."""

    rows: int
    monitored: int  # enabled, status not ignored
    healthy: int
    unhealthy: int
    disabled: int
    ignored: int
    unjudgeable: int


class Verdict(enum.StrEnum):
    """What the table says of one instance now."""

    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    DISABLED = "disabled"
    IGNORED = "ignored"
    DELETED = "deleted"
    UNJUDGEABLE = "unjudgeable"


@dataclass(frozen=True, slots=True)
class RowFacts:
    """One row of the application's table, read now: its raw values, and the verdict
    with the rule and numbers behind it (for `explain`)."""

    instance_id: str
    verdict: Verdict
    rule: str  # e.g. "heartbeat age 143.2 s > stale_after 90 s"
    raw: Mapping[str, str | None]  # column → the stored value as text
    finding: Finding | None = None
    unjudgeable: Unjudgeable | None = None


@dataclass(frozen=True, slots=True)
class Incident:
    """One episode of an instance being unhealthy, from detection to close."""

    id: int
    instance_id: str
    reason: Reason
    state: IncidentState
    attempt: int  # actions taken so far, counting those carried over from a flapping predecessor
    opened_at: datetime
    next_action_at: datetime | None
    closed_at: datetime | None = None
    last_action: Action | None = None
    process: str | None = None
    flapping: bool = False
    # Why its process restart is held (the blast radius), until it goes out or is approved.
    held: Mapping[str, Any] | None = None
    approved_by: str | None = None  # lets one held process restart through


class SelectorKind(enum.StrEnum):
    ALL = "all"
    PROCESS = "process"  # the instances whose process column names it
    MATCH = "match"  # the instances whose id matches a glob


@dataclass(frozen=True, slots=True)
class Selector:
    """Which instances a fleet pause holds, also those that appear while it lasts."""

    kind: SelectorKind
    pattern: str = ""  # the process name or the glob; "" for all

    def covers(self, instance_id: str, process: str | None) -> bool:
        if self.kind is SelectorKind.ALL:
            return True
        if self.kind is SelectorKind.PROCESS:
            return process == self.pattern
        return fnmatchcase(instance_id, self.pattern)

    def as_json(self) -> dict[str, Any]:
        return {str(self.kind): True if self.kind is SelectorKind.ALL else self.pattern}

    def __str__(self) -> str:
        """As given on the command line: `--all`, `--process app`, `--match 'wa-*'`."""
        if self.kind is SelectorKind.ALL:
            return "--all"
        return f"--{self.kind} {self.pattern}"


@dataclass(frozen=True, slots=True)
class Pause:
    """An operator's hold: no recovery action until `until`, on one instance or, given a
    `selector`, on every instance it covers (`instance_id` is then `FLEET`)."""

    instance_id: str
    until: datetime
    reason: str
    actor: str
    selector: Selector | None = None


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One append-only row of the audit trail."""

    id: int
    at: datetime
    instance_id: str
    action: AuditAction
    outcome: Outcome
    incident_id: int | None = None
    reason: str | None = None
    attempt: int | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    duration: float | None = None
    actor: str = "watchdog"
    intent_id: int | None = None  # an outcome row: the id of its intent (`started`) row

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "incident": self.incident_id,
            "instance": self.instance_id,
            "reason": self.reason,
            "attempt": self.attempt,
            "action": str(self.action),
            "outcome": str(self.outcome),
            "detail": dict(self.detail),
            "duration": self.duration,
            "actor": self.actor,
            "intent": self.intent_id,
        }


@dataclass(frozen=True, slots=True)
class Target:
    """What a recovery action works on: one instance and the process hosting it."""

    instance_id: str
    process: str | None


@dataclass(frozen=True, slots=True)
class Generation:
    """One life of a hosting process: its PID and when it started (Unix seconds), as far
    as its backend can tell. A restart, by the watchdog or anyone else, makes a new one."""

    pid: int | None
    started: float | None = None

    def same_as(self, other: Generation) -> bool:
        """The same life: the same PID, and the same start where both know it (a PID
        alone may be reused by a later process). Starts read from the kernel's boot time
        may move by up to a second when the clock is stepped."""
        if self.pid is None or other.pid is None or self.pid != other.pid:
            return self.pid is None and other.pid is None and self.started == other.started
        if self.started is None or other.started is None:
            return True
        return abs(self.started - other.started) <= _START_TOLERANCE


_START_TOLERANCE = 1.0  # seconds


class RestartedBy(enum.StrEnum):
    WATCHDOG = "watchdog"
    EXTERNAL = "external"  # an operator, the process manager, a crash and respawn


@dataclass(frozen=True, slots=True)
class HostRecord:
    """A process hosting instances as the watchdog last saw it, and its last restart."""

    process: str  # the process backend's key (program, unit, PM2 name)
    generation: Generation
    seen_at: datetime
    restarted_at: datetime | None = None
    restarted_by: RestartedBy | None = None
    incident_id: int | None = None  # the incident the watchdog restarted it for


@dataclass(frozen=True, slots=True)
class ActionResult:
    """Evidence from a successful recovery action, recorded in the audit detail.
    `generation`: a process restart's new process, when the backend can tell."""

    detail: Mapping[str, Any] = field(default_factory=dict)
    generation: Generation | None = None
