"""The writes that hold an incident's next attempt back or move it, each with its audit
row in the same transaction: the restart budget (`suppressed`), the blast radius (`held`,
and an operator's `approved`), a restart of the process hosting it (`host_restarted`),
and the `flapping` mark. `SqlLedger` is one."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from watchdog.core.model import AuditAction, Incident, IncidentState, Outcome
from watchdog.core.ports import NewAudit
from watchdog.store.audit import AuditTrail
from watchdog.store.records import ACTIONABLE, INCIDENT_COLUMNS, incident_audit, incident_from
from watchdog.store.schema import OPEN_STATES, UtcDateTime, incidents
from watchdog.store.state import bump


class IncidentHolds(AuditTrail):
    async def suppress_all(
        self,
        held: Sequence[Incident],
        until: datetime,
        now: datetime,
        detail: Mapping[str, Any],
    ) -> None:
        """Hold the next attempt of each until `until` (the restart budget is spent); an
        exhausted incident's retry is held the same way, and it stays exhausted."""
        if not held:
            return
        exhausted, suppressed = str(IncidentState.EXHAUSTED), str(IncidentState.SUPPRESSED)
        retrying = sa.and_(incidents.c.state == exhausted, incidents.c.next_action_at.is_not(None))
        targets = self._db.rows(
            "held", {"id": sa.Integer(), "attempt": sa.Integer()}, [(i.id, i.attempt) for i in held]
        )
        update = (
            sa.update(incidents)
            .where(incidents.c.id == targets.c.id)
            .where(
                sa.or_(
                    incidents.c.state.in_(ACTIONABLE),
                    retrying,  # one never to be retried again is left as it is
                )
            )
            .where(incidents.c.attempt == targets.c.attempt)
            .values(
                state=sa.case((incidents.c.state == exhausted, exhausted), else_=suppressed),
                next_action_at=until,
                held=None,  # the budget holds it now
                updated_at=now,
            )
        )
        full = {**detail, "until": until.isoformat()}
        audits = [
            (
                i.id,
                incident_audit(
                    i, AuditAction.SUPPRESSED, full, outcome=Outcome.SKIPPED, attempt=i.attempt + 1
                ),
            )
            for i in held
        ]
        await self._change_all("suppress incidents", update, audits, now)

    async def hold_all(
        self, held: Sequence[Incident], now: datetime, detail: Mapping[str, Any]
    ) -> None:
        """Mark each one's process restart held (audited once: one already held is left
        as it is); it stays due, so the next cycles weigh it again."""
        if not held:
            return
        targets = self._db.rows(
            "holding",
            {"id": sa.Integer(), "attempt": sa.Integer()},
            [(i.id, i.attempt) for i in held],
        )
        update = (
            sa.update(incidents)
            .where(incidents.c.id == targets.c.id)
            .where(incidents.c.attempt == targets.c.attempt)
            .where(incidents.c.state.in_(OPEN_STATES))
            .where(incidents.c.held.is_(None))
            .values(held=json.dumps(dict(detail), sort_keys=True), updated_at=now)
        )
        audits = [
            (
                i.id,
                incident_audit(
                    i, AuditAction.HELD, detail, outcome=Outcome.SKIPPED, attempt=i.attempt + 1
                ),
            )
            for i in held
        ]
        await self._change_all("hold restarts", update, audits, now)

    async def approve(self, instance_id: str, actor: str) -> Incident | None:
        """Let the next process restart of the instance's open incident through the blast
        radius, once (audited `approved` with `actor`); None when it has no open incident."""
        open_one = sa.and_(
            incidents.c.instance_id == instance_id, incidents.c.state.in_(OPEN_STATES)
        )
        async with self._db.begin("approve restart") as conn:
            now = await self._db.read_now(conn)
            update = (
                sa.update(incidents)
                .where(open_one)
                .values(approved_by=actor, updated_at=now)
                .returning(*INCIDENT_COLUMNS)
            )
            row = (await conn.execute(update)).first()
            if row is None:
                return None
            incident = incident_from(row)
            detail = {"held": dict(incident.held) if incident.held else None}
            spec = incident_audit(incident, AuditAction.APPROVED, detail, actor=actor)
            written = await self.insert_audit(conn, now, spec)
            await bump(conn)
        self._emit(written)
        return incident

    async def host_restarted_all(
        self,
        hosted: Sequence[Incident],
        not_before: datetime,
        now: datetime,
        detail: Mapping[str, Any],
    ) -> None:
        """The process hosting each restarted: audited `host_restarted`, and its next
        attempt waits until `not_before` (the process's settle). An exhausted incident
        never to be retried again is not given a retry."""
        if not hosted:
            return
        targets = self._db.rows("hosted", {"id": sa.Integer()}, [(i.id,) for i in hosted])
        later = sa.or_(
            incidents.c.next_action_at.is_(None), incidents.c.next_action_at < not_before
        )
        never = sa.and_(
            incidents.c.state == str(IncidentState.EXHAUSTED),
            incidents.c.next_action_at.is_(None),
        )
        update = (
            sa.update(incidents)
            .where(incidents.c.id == targets.c.id)
            .where(incidents.c.state.in_(OPEN_STATES))
            .values(
                next_action_at=sa.case(
                    (never, None),
                    (later, sa.literal(not_before, UtcDateTime())),
                    else_=incidents.c.next_action_at,
                ),
                updated_at=now,
            )
        )
        audits = [(i.id, incident_audit(i, AuditAction.HOST_RESTARTED, detail)) for i in hosted]
        await self._change_all("host restarted", update, audits, now)

    async def mark_flapping_all(
        self, flapping: Sequence[tuple[Incident, int]], now: datetime
    ) -> None:
        if not flapping:
            return
        targets = self._db.rows("flapping", {"id": sa.Integer()}, [(i.id,) for i, _ in flapping])
        update = (
            sa.update(incidents)
            .where(incidents.c.id == targets.c.id)
            .where(incidents.c.flapping == sa.false())
            .values(flapping=True, updated_at=now)
        )
        audits = [
            (i.id, incident_audit(i, AuditAction.FLAPPING, {"incidents_in_window": count}))
            for i, count in flapping
        ]
        await self._change_all("mark flapping", update, audits, now)

    async def _change_all(
        self,
        what: str,
        update: sa.Update,
        audits: Sequence[tuple[int, NewAudit]],
        now: datetime,
    ) -> None:
        """Apply a conditional update of incidents and append the audit rows, given by
        incident id, of those it matched: one transaction, two short statements."""
        async with self._db.begin(what) as conn:
            matched = {row[0] for row in await conn.execute(update.returning(incidents.c.id))}
            specs = [spec for incident_id, spec in audits if incident_id in matched]
            written = await self.insert_audits(conn, now, specs)
            if matched:
                await bump(conn)
        for row in written:
            self._emit(row)
