"""The ledger in memory, with the semantics of `store.ledger.SqlLedger` (conditional
claims, an audit row with every state change; tests/contract checks they agree)."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import fields, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from watchdog.core.model import (
    ACTIONABLE_STATES,
    FLEET,
    OPEN_STATES,
    Action,
    AuditAction,
    AuditRow,
    Finding,
    Incident,
    IncidentState,
    Outcome,
    Pause,
    Selector,
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
    paused_audit,
)
from watchdog.testing.clock import FakeClock

if TYPE_CHECKING:
    pass


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
        self.fleet_pauses: list[Pause] = []  # oldest first
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
        fleet = tuple(p for p in self.fleet_pauses if p.until > now)
        return LedgerState(await self.load_open(), await self.load_pauses(now), fleet)

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
        current = self.incidents.get(incident.id)
        if current is None or current.state not in (*ACTIONABLE_STATES, IncidentState.EXHAUSTED):
            return None
        if current.attempt != attempt - 1:
            return None
        exhausted = current.state is IncidentState.EXHAUSTED  # a retry leaves it so
        approval = None if detail and detail.get("approved_by") else current.approved_by
        self.incidents[incident.id] = replace(
            current,
            attempt=attempt,
            last_action=action,
            next_action_at=retry_at,
            state=IncidentState.EXHAUSTED if exhausted else IncidentState.OPEN,
            held=None,
            approved_by=approval,
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
            due = current.next_action_at  # never earlier: a host restart may have deferred it
            if due is None or due < next_action_at:
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

    async def _exhaust_one(
        self, incident: Incident, now: datetime, retry_at: datetime | None
    ) -> None:
        current = self._actionable(incident)
        if current is None:
            return
        self.incidents[incident.id] = replace(
            current, state=IncidentState.EXHAUSTED, next_action_at=retry_at
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

    async def exhaust_all(
        self, exhausted: Sequence[Incident], now: datetime, retry_at: datetime | None = None
    ) -> None:
        for incident in exhausted:
            await self._exhaust_one(incident, now, retry_at)

    async def suppress_all(
        self, held: Sequence[Incident], until: datetime, now: datetime, detail: Mapping[str, Any]
    ) -> None:
        for incident in held:
            current = self.incidents.get(incident.id)
            if current is None:
                continue
            retrying = current.state is IncidentState.EXHAUSTED and current.next_action_at
            if current.state not in ACTIONABLE_STATES and not retrying:
                continue
            if current.attempt != incident.attempt:
                continue
            exhausted = current.state is IncidentState.EXHAUSTED  # a held retry stays so
            state = IncidentState.EXHAUSTED if exhausted else IncidentState.SUPPRESSED
            self.incidents[incident.id] = replace(
                current, state=state, next_action_at=until, held=None
            )
            full = {**detail, "until": until.isoformat()}
            attempt = incident.attempt + 1
            self._write(now, _row(incident, AuditAction.SUPPRESSED, Outcome.SKIPPED, attempt, full))

    async def hold_all(
        self, held: Sequence[Incident], now: datetime, detail: Mapping[str, Any]
    ) -> None:
        for incident in held:
            current = self.incidents.get(incident.id)
            if current is None or current.state not in OPEN_STATES or current.held is not None:
                continue
            if current.attempt != incident.attempt:
                continue
            self.incidents[incident.id] = replace(current, held=_stored(detail))
            attempt = incident.attempt + 1
            self._write(now, _row(incident, AuditAction.HELD, Outcome.SKIPPED, attempt, detail))

    async def approve(self, instance_id: str, actor: str) -> Incident | None:
        current = (await self.load_open()).get(instance_id)
        if current is None:
            return None
        approved = replace(current, approved_by=actor)
        self.incidents[current.id] = approved
        detail = {"held": dict(current.held) if current.held else None}
        spec = _row(current, AuditAction.APPROVED, Outcome.OK, current.attempt, detail)
        self._write(self.clock.now, replace(spec, actor=actor))
        return approved

    async def host_restarted_all(
        self,
        hosted: Sequence[Incident],
        not_before: datetime,
        now: datetime,
        detail: Mapping[str, Any],
    ) -> None:
        for incident in hosted:
            current = self.incidents.get(incident.id)
            if current is None or current.state not in OPEN_STATES:
                continue
            due = current.next_action_at
            never = current.state is IncidentState.EXHAUSTED and due is None
            if not never and (due is None or due < not_before):
                self.incidents[incident.id] = replace(current, next_action_at=not_before)
            n = current.attempt
            self._write(now, _row(incident, AuditAction.HOST_RESTARTED, Outcome.OK, n, detail))

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
        await self.pause_all([pause], now)

    async def pause_all(self, held: Sequence[Pause], now: datetime) -> None:
        if not held:
            return
        for pause in held:
            if pause.selector is not None:
                self.fleet_pauses = [
                    p for p in self.fleet_pauses if p.selector != pause.selector
                ] + [pause]
            else:
                self.pauses[pause.instance_id] = pause
        self._write(now, paused_audit(held))

    async def resume(self, instance_id: str, actor: str) -> bool:
        return bool(await self.resume_all([instance_id], actor))

    async def resume_all(self, instance_ids: Sequence[str], actor: str) -> list[str]:
        now = self.clock.now
        lifted = []
        for instance_id in instance_ids:
            pause = self.pauses.pop(instance_id, None)  # an expired pause is tidied away
            if pause is not None and pause.until > now:
                lifted.append(instance_id)
        if lifted:
            detail: dict[str, Any] = {"ids": lifted} if len(lifted) > 1 else {}
            target = lifted[0] if len(lifted) == 1 else FLEET
            spec = NewAudit(target, AuditAction.RESUMED, Outcome.OK, detail=detail, actor=actor)
            self._write(now, spec)
        return lifted

    async def resume_fleet(self, selector: Selector, actor: str) -> bool:
        now = self.clock.now
        found = [p for p in self.fleet_pauses if p.selector == selector]
        self.fleet_pauses = [p for p in self.fleet_pauses if p.selector != selector]
        if not any(p.until > now for p in found):
            return False
        detail = {"selector": selector.as_json()}
        self._write(
            now, NewAudit(FLEET, AuditAction.RESUMED, Outcome.OK, detail=detail, actor=actor)
        )
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


def _stored(detail: Mapping[str, Any]) -> dict[str, Any]:
    """As a JSON column reads it back."""
    return dict(json.loads(json.dumps(dict(detail), sort_keys=True, default=str)))


def _row(
    incident: Incident,
    action: AuditAction,
    outcome: Outcome,
    attempt: int,
    detail: Mapping[str, Any],
) -> NewAudit:
    reason = str(incident.reason)
    return NewAudit(incident.instance_id, action, outcome, incident.id, reason, attempt, detail)
