"""The ports the engine talks through. Adapters in `store/` and `actions/` implement them;
`testing.py` ships in-memory fakes of each.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar, runtime_checkable

from watchdog.core.breaker import BreakerSnapshot
from watchdog.core.model import (
    FLEET,
    Action,
    ActionResult,
    AuditAction,
    AuditRow,
    Finding,
    Generation,
    HostRecord,
    Incident,
    IncidentState,
    Outcome,
    Pause,
    Scan,
    Selector,
    Target,
)
from watchdog.core.safety import Restart


class Clock(Protocol):
    """Monotonic seconds, for measuring durations. Wall time comes from the database."""

    def monotonic(self) -> float: ...


class InstanceStore(Protocol):
    """The application's table: read in one query per cycle; only the flag is written."""

    async def scan(self, known: Mapping[str, Finding] | None = None) -> Scan:
        """`known`: the caller's last findings; one still unhealthy may be reused as is
        rather than read and judged again."""
        ...

    async def set_force_reconnect(self, instance_id: str) -> bool:
        """Set the flag; False when no such instance exists."""
        ...

    async def exists(self, instance_id: str) -> bool: ...

    async def unmonitored(self, instance_ids: Collection[str]) -> dict[str, str]:
        """Of these instances, those now disabled, in an ignored status or deleted, and why."""
        ...

    async def now(self) -> datetime:
        """The database clock."""
        ...

    async def monitored_by_process(self) -> dict[str | None, tuple[int, int]]:
        """Monitored rows by their process column value: (monitored, judgeable)."""
        ...


@dataclass(frozen=True, slots=True)
class Opening:
    """An incident to open for `finding`, continuing an earlier one's attempt count."""

    finding: Finding
    carried: int = 0
    continues: int | None = None

    def detail(self) -> dict[str, Any]:
        """The `detected` audit row's detail: what was seen, and what carried over."""
        finding = self.finding
        carried = {"continues": self.continues, "carried_attempts": self.carried}
        return {
            "status": finding.status,
            "age": round(finding.age, 3),
            "threshold": finding.threshold,
            "overdue": round(finding.overdue, 3),
            **(carried if self.continues else {}),
        }


@dataclass(frozen=True, slots=True)
class Claim:
    """Attempt `attempt` of `incident` with `action`; the next is due at `retry_at`."""

    incident: Incident
    attempt: int
    action: Action
    retry_at: datetime
    detail: Mapping[str, Any] | None = None

    @property
    def spends_approval(self) -> bool:
        """An operator's approval lets this one process restart through (and is spent)."""
        return bool(self.detail and self.detail.get("approved_by"))


@dataclass(frozen=True, slots=True)
class Closing:
    """Close `incident` as `state` (recovered, dismissed or reset), audited with `detail`."""

    incident: Incident
    state: IncidentState
    actor: str
    detail: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Finished:
    """The outcome of attempt `attempt`; the next attempt may follow at `next_action_at`."""

    incident: Incident
    attempt: int
    action: Action
    outcome: Outcome
    detail: Mapping[str, Any]
    duration: float
    next_action_at: datetime
    intent_id: int | None = None  # the attempt's `started` row


@dataclass(frozen=True, slots=True)
class NewAudit:
    """An audit row to append; the store assigns its id and time."""

    instance_id: str
    action: AuditAction
    outcome: Outcome
    incident_id: int | None = None
    reason: str | None = None
    attempt: int | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    duration: float | None = None
    actor: str = "watchdog"
    intent_id: int | None = None  # an outcome: its intent row (one outcome per intent)


def interruption(intent: AuditRow, note: str) -> NewAudit:
    """The `interrupted` outcome of an intent row whose action left no outcome."""
    return NewAudit(
        intent.instance_id,
        intent.action,
        Outcome.INTERRUPTED,
        intent.incident_id,
        intent.reason,
        intent.attempt,
        {"intent": intent.id, "note": note},
        intent_id=intent.id,
    )


def paused_audit(held: Sequence[Pause]) -> NewAudit:
    """The one audit row of a pause command: its instance (or `*` for several or a
    selector), until and reason, and the ids or the selector."""
    first = held[0]
    detail: dict[str, Any] = {"until": first.until.isoformat(), "reason": first.reason}
    target = first.instance_id
    if first.selector is not None:
        detail["selector"] = first.selector.as_json()
        target = FLEET
    elif len(held) > 1:
        detail["ids"] = [p.instance_id for p in held]
        target = FLEET
    return NewAudit(target, AuditAction.PAUSED, Outcome.OK, detail=detail, actor=first.actor)


@dataclass(frozen=True, slots=True)
class AuditQuery:
    instance_id: str | None = None
    since: datetime | None = None
    actions: Collection[AuditAction] = ()
    limit: int = 100


_T = TypeVar("_T")
BATCH = 100  # rows a ledger call commits together: one commit per row stalls a mass freeze


def chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True, slots=True)
class LedgerState:
    """What steers a cycle: open incidents and the pauses in force, by instance id.
    Read-only: a ledger may hand out its cache."""

    incidents: Mapping[str, Incident]
    pauses: Mapping[str, Pause]
    fleet_pauses: Sequence[Pause] = ()  # by selector, oldest first


class Ledger(Protocol):
    """Our own tables: incidents, pauses and the append-only audit trail.

    Every method that changes an incident also appends its audit row in the same
    transaction, so state and trail never disagree.
    """

    async def load_open(self) -> dict[str, Incident]:
        """Incidents that are open or exhausted, by instance id."""
        ...

    async def last_closed(self, instance_ids: Collection[str]) -> dict[str, Incident]: ...

    async def load_pauses(self, now: datetime) -> dict[str, Pause]: ...

    async def load_state(self, now: datetime, revision: int | None = None) -> LedgerState:
        """`load_open` and `load_pauses` together, as of one moment (one read each cycle).
        `revision`: the ledger's revision as the scan read it (`Scan.ledger_revision`),
        so nothing is read while it is unchanged."""
        ...

    async def open_incidents(self, openings: Sequence[Opening], now: datetime) -> list[Incident]:
        """Open an incident for each (audited `detected`), committed together (a mass freeze
        opens hundreds at once; a commit each would hold the cycle up for seconds)."""
        ...

    async def begin_actions(self, claims: Sequence[Claim], now: datetime) -> list[int | None]:
        """Claim each attempt and commit its intent row (`started`), all together before
        any of them is acted on; one result per claim, in order: the intent row's id, or
        None when another writer claimed that attempt first."""
        ...

    async def finish_actions(self, finished: Sequence[Finished]) -> None:
        """Record each attempt's outcome (one per intent), committed together (outcomes of
        a storm of calls arrive faster than one commit each)."""
        ...

    async def exhaust_all(
        self, exhausted: Sequence[Incident], now: datetime, retry_at: datetime | None = None
    ) -> None:
        """Mark each exhausted (audited), committed together; `retry_at`: when its last
        rung is tried again (None: never)."""
        ...

    async def close(
        self,
        incident: Incident,
        state: IncidentState,
        now: datetime,
        actor: str,
        detail: Mapping[str, Any],
    ) -> None: ...

    async def close_all(self, closings: Sequence[Closing], now: datetime) -> None:
        """`close` for each, committed together (a mass recovery closes hundreds at once;
        a commit each would hold the cycle, and the detection of others, up for seconds).
        An incident no longer open is left as it is, without an audit row."""
        ...

    async def suppress_all(
        self, held: Sequence[Incident], until: datetime, now: datetime, detail: Mapping[str, Any]
    ) -> None:
        """Hold each one's next attempt until `until` (the restart budget is spent), where
        it is still actionable at the same attempt; committed together."""
        ...

    async def hold_all(
        self, held: Sequence[Incident], now: datetime, detail: Mapping[str, Any]
    ) -> None:
        """Mark each one's process restart held (audited `held` once, with `detail`); it
        stays due. A claim clears the hold."""
        ...

    async def approve(self, instance_id: str, actor: str) -> Incident | None:
        """Let the next process restart of the instance's open incident through the blast
        radius once (audited `approved`); None when it has no open incident."""
        ...

    async def host_restarted_all(
        self,
        hosted: Sequence[Incident],
        not_before: datetime,
        now: datetime,
        detail: Mapping[str, Any],
    ) -> None:
        """Audit `host_restarted` on each, whose next attempt then waits until
        `not_before`; committed together."""
        ...

    async def mark_flapping_all(
        self, flapping: Sequence[tuple[Incident, int]], now: datetime
    ) -> None:
        """Mark each (incident, incidents in the window) flapping, once; committed together."""
        ...

    async def incident_counts(
        self, instance_ids: Collection[str], since: datetime
    ) -> dict[str, int]: ...

    async def orphan_intents(
        self, among: Collection[int] | None = None, instances: Collection[str] | None = None
    ) -> list[AuditRow]:
        """Intent rows (`started`) that have no outcome yet: of all, of the intent ids
        `among`, or of the instances `instances`."""
        ...

    async def interrupt(self, intents: Sequence[AuditRow], note: str) -> list[AuditRow]:
        """Give each intent an `interrupted` outcome, unless it has an outcome by now;
        returns the rows written."""
        ...

    async def pause(self, pause: Pause, now: datetime) -> None: ...

    async def pause_all(self, held: Sequence[Pause], now: datetime) -> None:
        """Pause several instances (one until, reason and actor) or set one fleet pause
        (a `Pause` with a selector); audited once."""
        ...

    async def resume(self, instance_id: str, actor: str) -> bool: ...

    async def resume_all(self, instance_ids: Sequence[str], actor: str) -> list[str]:
        """Lift the pauses in force of these instances, audited once; those lifted."""
        ...

    async def resume_fleet(self, selector: Selector, actor: str) -> bool:
        """Lift the fleet pause of `selector` in force, audited once."""
        ...

    async def append(self, row: NewAudit) -> AuditRow: ...

    async def append_all(self, rows: Sequence[NewAudit]) -> list[AuditRow]:
        """`append` for each, committed together."""
        ...

    async def audit(self, query: AuditQuery) -> list[AuditRow]: ...

    async def incident_history(self, instance_id: str, limit: int) -> Sequence[Incident]: ...


class FleetState(Protocol):
    """Fleet-wide state: the restarts the watchdog started, the brake, and whether rows
    that cannot be judged were reported."""

    async def recent_restarts(self, since: datetime) -> list[Restart]: ...

    async def record_restart(
        self, process: str, at: datetime, instances: Sequence[str]
    ) -> None: ...

    async def forget_restart(self, process: str, at: datetime) -> None:
        """A recorded restart that did not go out after all: it spends no budget."""
        ...

    async def hosts(self) -> dict[str, HostRecord]:
        """The processes hosting instances as last seen, by process."""
        ...

    async def record_host(self, record: HostRecord) -> None: ...

    async def brake(self) -> dict[str, Any] | None: ...

    async def grace(self) -> dict[str, Any] | None: ...

    async def set_grace(
        self, until: datetime, now: datetime, detail: Mapping[str, Any]
    ) -> AuditRow: ...

    async def unjudgeable(self) -> dict[str, Any] | None: ...

    async def set_unjudgeable(
        self, present: bool, now: datetime, detail: Mapping[str, Any]
    ) -> AuditRow: ...

    async def backlog(self) -> dict[str, Any] | None: ...

    async def set_backlog(
        self, present: bool, now: datetime, detail: Mapping[str, Any]
    ) -> AuditRow: ...

    async def set_brake(
        self, engaged: bool, now: datetime, detail: Mapping[str, Any]
    ) -> AuditRow: ...


class BreakerStore(Protocol):
    """Where the circuit breakers' state is kept between cycles and restarts."""

    async def load(self) -> list[BreakerSnapshot]: ...

    async def save(self, snapshots: Sequence[BreakerSnapshot], now: datetime) -> None: ...


class Recovery(Protocol):
    """One rung of the ladder. Targets with the same `key` share one call per cycle
    (several instances of one frozen process get one restart)."""

    @property
    def action(self) -> Action: ...

    @property
    def timeout(self) -> float:
        """Seconds the whole action may take, retries included."""
        ...

    def key(self, target: Target) -> str:
        """Which call serves this target; raises PermanentRecoveryError on a bad target."""
        ...

    async def recover(self, target: Target) -> ActionResult: ...


@runtime_checkable
class ProcessLocator(Protocol):
    """A process backend that can say which PID hosts a process (for `show`).

    `name` is what the backend's `key()` returned for the instance.
    """

    async def locate(self, name: str) -> int | None: ...


@runtime_checkable
class GenerationSource(Protocol):
    """A process backend that can tell which life of a process is running now, so that a
    restart made by anyone (`supervisorctl restart`, systemd, a crash and respawn) is seen.

    `name` is what the backend's `key()` returned for the instance.
    """

    async def generation(self, name: str) -> Generation | None:
        """The running process's generation; None when it is not running or unknown.
        Raises a RecoveryError when the backend cannot be asked (within its timeout)."""
        ...
