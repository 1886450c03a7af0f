"""In-memory fakes of the ports, for tests and demos.

`FakeClock` moves only when told to; `MemoryInstanceStore` is the application's table
judged by `policy.classify` (the rule the SQL query mirrors); `MemoryLedger` keeps the
semantics of `store.ledger.SqlLedger` (conditional claims, an audit row with every state
change); `RecordingRecovery` records its calls and fails or hangs on request.

Only the standard library and watchdog's pure modules are imported here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from watchdog.core.errors import InvalidTarget, TransientRecoveryError
from watchdog.core.model import (
    ACTIONABLE_STATES,
    FLEET,
    OPEN_STATES,
    Action,
    ActionResult,
    AuditAction,
    AuditRow,
    Finding,
    Incident,
    IncidentState,
    Outcome,
    Pause,
    Scan,
    Target,
)
from watchdog.core.policy import (
    DetectionRules,
    InstanceRow,
    classify,
    time_to_threshold,
    unmonitored_reason,
)
from watchdog.core.ports import (
    AuditQuery,
    Claim,
    Closing,
    Finished,
    LedgerState,
    NewAudit,
    Opening,
    interruption,
)
from watchdog.core.safety import Restart

if TYPE_CHECKING:
    from watchdog.core.ports import Clock, InstanceStore, Ledger, Recovery

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
"""Where a `FakeClock` starts unless told otherwise."""


class FakeClock:
    """Wall time (`now`, aware UTC) and monotonic time that move only on `advance`."""

    def __init__(self, now: datetime = EPOCH, monotonic: float = 1000.0) -> None:
        if now.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self.now = now.astimezone(UTC)
        self._monotonic = monotonic

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by `seconds`."""
        if seconds < 0:
            raise ValueError(f"time only moves forward, got {seconds!r}")
        self.now += timedelta(seconds=seconds)
        self._monotonic += seconds


# ------------------------------------------------------------------------ instances


@dataclass(slots=True)
class InstanceRecord:
    """One mutable row of the application's table."""

    id: str
    enabled: bool
    status: str
    status_changed_at: datetime
    last_heartbeat_at: datetime | None
    force_reconnect: bool = False
    process: str | None = None


class MemoryInstanceStore:
    """The application's table in a dict; ages are measured against `clock.now`.

    An instance freezes when the test stops calling `beat`.
    """

    def __init__(self, clock: FakeClock, rules: DetectionRules | None = None) -> None:
        self.clock = clock
        self.rules = rules if rules is not None else DetectionRules()
        self.instances: dict[str, InstanceRecord] = {}
        self.scan_count = 0

    def add(
        self,
        instance_id: str,
        *,
        enabled: bool = True,
        status: str = "CONNECTED",
        beat: bool = True,
        process: str | None = None,
    ) -> InstanceRecord:
        """Insert an instance whose status changed now and, if `beat`, that beat now."""
        now = self.clock.now
        record = InstanceRecord(
            instance_id, enabled, status, now, now if beat else None, process=process
        )
        self.instances[instance_id] = record
        return record

    def beat(self, instance_id: str) -> None:
        """Record a heartbeat at the clock's now."""
        self.instances[instance_id].last_heartbeat_at = self.clock.now

    def set_status(self, instance_id: str, status: str) -> None:
        """Change the status; `status_changed_at` moves only when it really changes."""
        record = self.instances[instance_id]
        if record.status != status:
            record.status = status
            record.status_changed_at = self.clock.now

    def set_enabled(self, instance_id: str, enabled: bool) -> None:
        self.instances[instance_id].enabled = enabled

    async def scan(self) -> Scan:
        self.scan_count += 1
        now = self.clock.now
        findings: dict[str, Finding] = {}
        deadlines: list[float] = []
        for record in self.instances.values():
            row = _instance_row(record, now)
            finding = classify(row, self.rules)
            if finding is not None:
                findings[finding.instance_id] = finding
            left = time_to_threshold(row, self.rules)
            if left is not None:
                deadlines.append(left)
        monitored = sum(
            r.enabled and r.status not in self.rules.ignored_statuses
            for r in self.instances.values()
        )
        return Scan(now, findings, monitored, min(deadlines) if deadlines else None)

    async def set_force_reconnect(self, instance_id: str) -> bool:
        record = self.instances.get(instance_id)
        if record is None:
            return False
        record.force_reconnect = True
        return True

    async def exists(self, instance_id: str) -> bool:
        return instance_id in self.instances

    async def unmonitored(self, instance_ids: Collection[str]) -> dict[str, str]:
        result: dict[str, str] = {}
        for instance_id in instance_ids:
            record = self.instances.get(instance_id)
            enabled, status = (record.enabled, record.status) if record else (None, None)
            why = unmonitored_reason(enabled, status, self.rules)
            if why is not None:
                result[instance_id] = why
        return result

    async def now(self) -> datetime:
        return self.clock.now


def _instance_row(record: InstanceRecord, now: datetime) -> InstanceRow:
    beat = record.last_heartbeat_at
    return InstanceRow(
        instance_id=record.id,
        enabled=record.enabled,
        status=record.status,
        status_age=(now - record.status_changed_at).total_seconds(),
        heartbeat_age=None if beat is None else (now - beat).total_seconds(),
        process=record.process,
    )


# --------------------------------------------------------------------------- ledger


class MemoryLedger:
    """Incidents, pauses and the audit trail in lists, with `SqlLedger`'s semantics.

    Times come from `clock.now`. Every audit row is appended to `rows` (ids from 1) and,
    as SqlLedger does after each commit, to `emitted` and the optional `emit` sink.
    Details are stored as they read back from the SQL ledger (JSON round trip); the rows
    returned and emitted hold them as given, as SqlLedger's do. The contract suite in
    `tests/contract` runs the same tests on this and on SqlLedger.
    """

    def __init__(self, clock: FakeClock, emit: Callable[[AuditRow], None] | None = None) -> None:
        self.clock = clock
        self.incidents: dict[int, Incident] = {}
        self.pauses: dict[str, Pause] = {}
        self.rows: list[AuditRow] = []
        self.emitted: list[AuditRow] = []
        self._emit = emit

    # ---------------------------------------------------------------- reading

    async def load_open(self) -> dict[str, Incident]:
        return {i.instance_id: i for i in self.incidents.values() if i.state in OPEN_STATES}

    async def last_closed(self, instance_ids: Collection[str]) -> dict[str, Incident]:
        wanted = set(instance_ids)
        return {
            i.instance_id: i
            for i in self.incidents.values()  # in id order: the latest one wins
            if i.instance_id in wanted and i.state not in OPEN_STATES
        }

    async def load_pauses(self, now: datetime) -> dict[str, Pause]:
        return {k: p for k, p in self.pauses.items() if p.until > now}

    async def load_state(self, now: datetime, revision: int | None = None) -> LedgerState:
        return LedgerState(await self.load_open(), await self.load_pauses(now))

    async def audit(self, query: AuditQuery) -> list[AuditRow]:
        """Matching rows, the most recent `limit` of them, oldest first."""
        matching = [
            row
            for row in self.rows
            if (query.instance_id is None or row.instance_id == query.instance_id)
            and (query.since is None or row.at >= query.since)
            and (not query.actions or row.action in query.actions)
        ]
        return matching[-query.limit :] if query.limit > 0 else []

    async def incident_history(self, instance_id: str, limit: int) -> Sequence[Incident]:
        mine = [i for i in reversed(self.incidents.values()) if i.instance_id == instance_id]
        return mine[: max(limit, 0)]

    # ---------------------------------------------------------------- writing

    async def _open_one(
        self, finding: Finding, carried: int, continues: int | None, now: datetime
    ) -> Incident:
        incident = Incident(
            len(self.incidents) + 1,
            finding.instance_id,
            finding.reason,
            IncidentState.OPEN,
            carried,
            now,
            now,
            process=finding.process,
        )
        self.incidents[incident.id] = incident
        detail = Opening(finding, carried, continues).detail()
        self._write(now, _row(incident, AuditAction.DETECTED, Outcome.OK, carried, detail))
        return incident

    async def open_incidents(self, openings: Sequence[Opening], now: datetime) -> list[Incident]:
        return [await self._open_one(o.finding, o.carried, o.continues, now) for o in openings]

    async def _claim_one(
        self,
        incident: Incident,
        attempt: int,
        action: Action,
        now: datetime,
        retry_at: datetime,
        detail: Mapping[str, Any] | None = None,
    ) -> int | None:
        current = self._actionable(incident)
        if current is None or current.attempt != attempt - 1:
            return None
        self.incidents[incident.id] = replace(
            current,
            attempt=attempt,
            last_action=action,
            next_action_at=retry_at,
            state=IncidentState.OPEN,
        )
        spec = _row(incident, AuditAction(str(action)), Outcome.STARTED, attempt, detail or {})
        return self._write(now, spec).id

    async def begin_actions(self, claims: Sequence[Claim], now: datetime) -> list[int | None]:
        if len({c.incident.id for c in claims}) != len(claims):
            raise ValueError("one claim per incident per batch")
        return [
            await self._claim_one(c.incident, c.attempt, c.action, now, c.retry_at, c.detail)
            for c in claims
        ]

    async def _finish_one(
        self,
        incident: Incident,
        attempt: int,
        action: Action,
        outcome: Outcome,
        detail: Mapping[str, Any],
        duration: float,
        next_action_at: datetime,
        intent_id: int | None = None,
    ) -> None:
        spec = replace(
            _row(incident, AuditAction(str(action)), outcome, attempt, detail),
            duration=round(duration, 6),
            intent_id=intent_id,
        )
        self._write_all(self.clock.now, [spec])  # one outcome per intent
        # Only an open incident's: a suppressed one waits for the restart budget to return.
        current = self.incidents.get(incident.id)
        if current and current.state is IncidentState.OPEN and current.attempt == attempt:
            self.incidents[incident.id] = replace(current, next_action_at=next_action_at)

    async def finish_actions(self, finished: Sequence[Finished]) -> None:
        for f in finished:
            await self._finish_one(
                f.incident,
                f.attempt,
                f.action,
                f.outcome,
                f.detail,
                f.duration,
                f.next_action_at,
                f.intent_id,
            )

    async def _exhaust_one(self, incident: Incident, now: datetime) -> None:
        current = self._actionable(incident)
        if current is None:
            return
        self.incidents[incident.id] = replace(
            current, state=IncidentState.EXHAUSTED, next_action_at=None
        )
        n = incident.attempt
        self._write(now, _row(incident, AuditAction.EXHAUSTED, Outcome.OK, n, {"attempts": n}))

    async def close(
        self,
        incident: Incident,
        state: IncidentState,
        now: datetime,
        actor: str,
        detail: Mapping[str, Any],
    ) -> None:
        current = self.incidents.get(incident.id)
        if current is None or current.state not in OPEN_STATES:
            return
        self.incidents[incident.id] = replace(
            current, state=state, closed_at=now, next_action_at=None
        )
        action = AuditAction(str(state))  # recovered, reset, dismissed
        spec = _row(incident, action, Outcome.OK, incident.attempt, detail)
        self._write(now, replace(spec, actor=actor))

    async def close_all(self, closings: Sequence[Closing], now: datetime) -> None:
        for c in closings:
            await self.close(c.incident, c.state, now, c.actor, c.detail)

    async def exhaust_all(self, exhausted: Sequence[Incident], now: datetime) -> None:
        for incident in exhausted:
            await self._exhaust_one(incident, now)

    async def suppress_all(
        self, held: Sequence[Incident], until: datetime, now: datetime, detail: Mapping[str, Any]
    ) -> None:
        for incident in held:
            current = self._actionable(incident)
            if current is None or current.attempt != incident.attempt:
                continue
            self.incidents[incident.id] = replace(
                current, state=IncidentState.SUPPRESSED, next_action_at=until
            )
            full = {**detail, "until": until.isoformat()}
            attempt = incident.attempt + 1
            self._write(now, _row(incident, AuditAction.SUPPRESSED, Outcome.SKIPPED, attempt, full))

    async def mark_flapping_all(
        self, flapping: Sequence[tuple[Incident, int]], now: datetime
    ) -> None:
        for incident, count in flapping:
            current = self.incidents.get(incident.id)
            if current is None or current.flapping:
                continue
            self.incidents[incident.id] = replace(current, flapping=True)
            detail = {"incidents_in_window": count}
            n = incident.attempt
            self._write(now, _row(incident, AuditAction.FLAPPING, Outcome.OK, n, detail))

    async def incident_counts(
        self, instance_ids: Collection[str], since: datetime
    ) -> dict[str, int]:
        counts: dict[str, int] = {}
        for incident in self.incidents.values():
            if incident.instance_id in instance_ids and incident.opened_at >= since:
                counts[incident.instance_id] = counts.get(incident.instance_id, 0) + 1
        return counts

    async def orphan_intents(
        self, among: Collection[int] | None = None, instances: Collection[str] | None = None
    ) -> list[AuditRow]:
        """Intent rows with no later row of the same incident, attempt and action (a row
        without an incident or attempt answers none, as NULLs never match in SQL)."""
        later: set[tuple[int, int, AuditAction]] = set()
        orphans: list[AuditRow] = []
        for r in reversed(self.rows):
            if r.incident_id is None or r.attempt is None:
                answered = False
            else:
                key = (r.incident_id, r.attempt, r.action)
                answered = key in later
                later.add(key)
            if (
                r.outcome == Outcome.STARTED
                and not answered
                and (among is None or r.id in among)
                and (instances is None or r.instance_id in instances)
            ):
                orphans.append(r)
        return orphans[::-1]

    async def interrupt(self, intents: Sequence[AuditRow], note: str) -> list[AuditRow]:
        return self._write_all(self.clock.now, [interruption(r, note) for r in intents])

    async def pause(self, pause: Pause, now: datetime) -> None:
        self.pauses[pause.instance_id] = pause
        detail = {"until": pause.until.isoformat(), "reason": pause.reason}
        spec = NewAudit(
            pause.instance_id, AuditAction.PAUSED, Outcome.OK, detail=detail, actor=pause.actor
        )
        self._write(now, spec)

    async def resume(self, instance_id: str, actor: str) -> bool:
        now = self.clock.now
        pause = self.pauses.pop(instance_id, None)  # an expired pause is just tidied away
        if pause is None or pause.until <= now:
            return False
        self._write(now, NewAudit(instance_id, AuditAction.RESUMED, Outcome.OK, actor=actor))
        return True

    async def append(self, row: NewAudit) -> AuditRow:
        return (await self.append_all([row]))[0]

    async def append_all(self, rows: Sequence[NewAudit]) -> list[AuditRow]:
        return self._write_all(self.clock.now, rows)

    def _write_all(self, at: datetime, specs: Sequence[NewAudit]) -> list[AuditRow]:
        """Append rows, leaving out outcomes of an intent that has its outcome already
        (SqlLedger's unique index on `intent_id`); returns the rows written."""
        answered = {r.intent_id for r in self.rows if r.intent_id is not None}
        written: list[AuditRow] = []
        for spec in specs:
            if spec.intent_id is not None:
                if spec.intent_id in answered:
                    continue
                answered.add(spec.intent_id)
            written.append(self._write(at, spec))
        return written

    def _write(self, at: datetime, spec: NewAudit) -> AuditRow:
        values = {f.name: getattr(spec, f.name) for f in fields(spec)}  # AuditRow's, after `at`
        row = AuditRow(len(self.rows) + 1, at, **{**values, "detail": dict(spec.detail)})
        stored = json.loads(json.dumps(row.detail, sort_keys=True, default=str))
        self.rows.append(replace(row, detail=stored))  # as it reads back from the table
        self.emitted.append(row)
        if self._emit is not None:
            self._emit(row)
        return row

    def _actionable(self, incident: Incident) -> Incident | None:
        """The stored version of `incident` if it may still be acted on (open or suppressed)."""
        current = self.incidents.get(incident.id)
        return current if current and current.state in ACTIONABLE_STATES else None


def _row(
    incident: Incident,
    action: AuditAction,
    outcome: Outcome,
    attempt: int,
    detail: Mapping[str, Any],
) -> NewAudit:
    reason = str(incident.reason)
    return NewAudit(incident.instance_id, action, outcome, incident.id, reason, attempt, detail)


class MemoryFleetState:
    """Restarts and the brake in memory, with `SqlFleetState`'s semantics."""

    def __init__(self, ledger: MemoryLedger) -> None:
        self.ledger = ledger
        self.restarts: list[tuple[Restart, list[str]]] = []
        self.brake_state: dict[str, Any] | None = None
        self.unjudgeable_state: dict[str, Any] | None = None
        self.grace_state: dict[str, Any] | None = None

    async def recent_restarts(self, since: datetime) -> list[Restart]:
        return [r for r, _ids in self.restarts if r.at >= since]

    async def record_restart(self, process: str, at: datetime, instances: Sequence[str]) -> None:
        self.restarts.append((Restart(process, at), list(instances)))

    async def brake(self) -> dict[str, Any] | None:
        return self.brake_state

    async def set_brake(self, engaged: bool, now: datetime, detail: Mapping[str, Any]) -> AuditRow:
        self.brake_state = {"engaged": engaged, "since": now.isoformat(), **detail}
        action = AuditAction.BRAKE_ENGAGED if engaged else AuditAction.BRAKE_RELEASED
        return await self.ledger.append(NewAudit(FLEET, action, Outcome.OK, detail=detail))

    async def grace(self) -> dict[str, Any] | None:
        return self.grace_state

    async def set_grace(
        self, until: datetime, now: datetime, detail: Mapping[str, Any]
    ) -> AuditRow:
        self.grace_state = {"until": until.isoformat(), "since": now.isoformat(), **detail}
        full = {**detail, "until": until.isoformat()}
        return await self.ledger.append(NewAudit(FLEET, AuditAction.GRACE, Outcome.OK, detail=full))

    async def unjudgeable(self) -> dict[str, Any] | None:
        return self.unjudgeable_state

    async def set_unjudgeable(
        self, present: bool, now: datetime, detail: Mapping[str, Any]
    ) -> AuditRow:
        self.unjudgeable_state = {"present": present, "since": now.isoformat(), **detail}
        action = AuditAction.UNJUDGEABLE if present else AuditAction.UNJUDGEABLE_CLEARED
        return await self.ledger.append(NewAudit(FLEET, action, Outcome.OK, detail=detail))


# ------------------------------------------------------------------------- recovery


class RecordingRecovery:
    """A recovery rung that records every `Target` it is called with in `calls`.

    Instances named in `fail` get a `TransientRecoveryError`; those in `hang` wait
    forever (until the engine's `timeout` cancels them); any other call succeeds and then
    runs `effect(target)`, e.g. to make the instance beat again. With `key_by="process"`
    targets sharing a process share one call, and a target without a process is a
    `PermanentRecoveryError`.
    """

    def __init__(
        self,
        action: Action,
        *,
        timeout: float = 5.0,
        key_by: Literal["instance", "process"] = "instance",
        fail: Collection[str] = (),
        hang: Collection[str] = (),
        effect: Callable[[Target], None] | None = None,
    ) -> None:
        self._action = action
        self._timeout = timeout
        self.key_by = key_by
        self.fail = set(fail)
        self.hang = set(hang)
        self.effect = effect
        self.calls: list[Target] = []

    @property
    def action(self) -> Action:
        return self._action

    @property
    def timeout(self) -> float:
        return self._timeout

    def key(self, target: Target) -> str:
        if self.key_by == "instance":
            return target.instance_id
        if target.process is None:  # as the supervisor backend says it
            raise InvalidTarget(f"instance {target.instance_id!r} has no process")
        return target.process

    async def recover(self, target: Target) -> ActionResult:
        self.calls.append(target)
        key = self.key(target)
        if target.instance_id in self.hang:
            await asyncio.Event().wait()  # never set: only a timeout ends this
        if target.instance_id in self.fail:
            raise TransientRecoveryError(f"{self._action} refused for {target.instance_id!r}")
        if self.effect is not None:
            self.effect(target)
        return ActionResult(detail={"fake": str(self._action), "key": key})


if TYPE_CHECKING:  # mypy checks that the fakes implement the ports
    _clock: Clock = FakeClock()
    _store: InstanceStore = MemoryInstanceStore(FakeClock())
    _ledger: Ledger = MemoryLedger(FakeClock())
    _recovery: Recovery = RecordingRecovery(Action.API_RESTART)
