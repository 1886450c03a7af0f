"""The watchdog's own tables: incidents, pauses and the append-only audit trail.

Every state change of an incident and its audit row are written in one transaction.
Claims are conditional UPDATEs whose row count says whether this writer won. Audit rows
are only ever inserted; after each commit they are also handed to `emit` (the structlog
event on stdout).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from watchdog.model import (
    Action,
    AuditAction,
    AuditRow,
    Finding,
    Incident,
    IncidentState,
    Outcome,
    Pause,
    Reason,
)
from watchdog.ports import AuditQuery, NewAudit
from watchdog.store.database import Database, as_utc
from watchdog.store.schema import OPEN_STATES, audit, incidents, pauses

AuditSink = Callable[[AuditRow], None]


def ignore_audit(_row: AuditRow) -> None:
    return None


class SqlLedger:
    def __init__(self, db: Database, emit: AuditSink = ignore_audit) -> None:
        self._db = db
        self._emit = emit

    # ---------------------------------------------------------------- reading

    async def load_open(self) -> dict[str, Incident]:
        query = sa.select(incidents).where(incidents.c.state.in_(OPEN_STATES))
        async with self._db.connect("load open incidents") as conn:
            rows = (await conn.execute(query)).all()
        return {row.instance_id: _incident(row) for row in rows}

    async def last_closed(self, instance_ids: Collection[str]) -> dict[str, Incident]:
        latest = (
            sa.select(sa.func.max(incidents.c.id))
            .where(incidents.c.instance_id.in_(list(instance_ids)))
            .where(incidents.c.state.not_in(OPEN_STATES))
            .group_by(incidents.c.instance_id)
        )
        query = sa.select(incidents).where(incidents.c.id.in_(latest))
        async with self._db.connect("load closed incidents") as conn:
            rows = (await conn.execute(query)).all()
        return {row.instance_id: _incident(row) for row in rows}

    async def load_pauses(self, now: datetime) -> dict[str, Pause]:
        query = sa.select(pauses).where(pauses.c.until > now)
        async with self._db.connect("load pauses") as conn:
            rows = (await conn.execute(query)).all()
        return {r.instance_id: Pause(r.instance_id, r.until, r.reason, r.actor) for r in rows}

    async def audit(self, query: AuditQuery) -> list[AuditRow]:
        """Matching rows, the most recent `limit` of them, oldest first."""
        select = sa.select(audit).order_by(audit.c.id.desc()).limit(query.limit)
        if query.instance_id is not None:
            select = select.where(audit.c.instance_id == query.instance_id)
        if query.since is not None:
            select = select.where(audit.c.at >= query.since)
        if query.actions:
            select = select.where(audit.c.action.in_([str(a) for a in query.actions]))
        async with self._db.connect("read audit") as conn:
            rows = (await conn.execute(select)).all()
        return [_audit_row(row) for row in reversed(rows)]

    async def incident_history(self, instance_id: str, limit: int) -> Sequence[Incident]:
        query = (
            sa.select(incidents)
            .where(incidents.c.instance_id == instance_id)
            .order_by(incidents.c.id.desc())
            .limit(limit)
        )
        async with self._db.connect("incident history") as conn:
            rows = (await conn.execute(query)).all()
        return [_incident(row) for row in rows]

    # ---------------------------------------------------------------- writing

    async def open_incident(
        self, finding: Finding, carried: int, continues: int | None, now: datetime
    ) -> Incident:
        values = {
            "instance_id": finding.instance_id,
            "reason": str(finding.reason),
            "state": str(IncidentState.OPEN),
            "attempt": carried,
            "process": finding.process,
            "continues_id": continues,
            "opened_at": now,
            "updated_at": now,
            "next_action_at": now,
        }
        detail = {
            "status": finding.status,
            "age": round(finding.age, 3),
            "threshold": finding.threshold,
            "overdue": round(finding.overdue, 3),
            **({"continues": continues, "carried_attempts": carried} if continues else {}),
        }
        async with self._db.begin("open incident") as conn:
            new_id = (
                await conn.execute(sa.insert(incidents).values(values).returning(incidents.c.id))
            ).scalar_one()
            row = await self._insert_audit(
                conn,
                now,
                NewAudit(
                    finding.instance_id,
                    AuditAction.DETECTED,
                    Outcome.OK,
                    new_id,
                    str(finding.reason),
                    carried,
                    detail,
                ),
            )
        self._emit(row)
        return Incident(
            new_id,
            finding.instance_id,
            finding.reason,
            IncidentState.OPEN,
            carried,
            now,
            now,
            process=finding.process,
        )

    async def begin_action(
        self, incident: Incident, attempt: int, action: Action, now: datetime, retry_at: datetime
    ) -> int | None:
        claim = (
            sa.update(incidents)
            .where(incidents.c.id == incident.id)
            .where(incidents.c.state == str(IncidentState.OPEN))
            .where(incidents.c.attempt == attempt - 1)
            .values(
                attempt=attempt, last_action=str(action), next_action_at=retry_at, updated_at=now
            )
        )
        intent = NewAudit(
            incident.instance_id,
            AuditAction(str(action)),
            Outcome.STARTED,
            incident.id,
            str(incident.reason),
            attempt,
        )
        async with self._db.begin("claim attempt") as conn:
            if (await conn.execute(claim)).rowcount != 1:
                return None
            row = await self._insert_audit(conn, now, intent)
        self._emit(row)
        return row.id

    async def finish_action(
        self,
        incident: Incident,
        attempt: int,
        action: Action,
        outcome: Outcome,
        detail: Mapping[str, Any],
        duration: float,
        next_action_at: datetime,
    ) -> None:
        update = (
            sa.update(incidents)
            .where(incidents.c.id == incident.id)
            .where(incidents.c.attempt == attempt)
            .where(incidents.c.state == str(IncidentState.OPEN))
            .values(next_action_at=next_action_at)
        )
        async with self._db.begin("record outcome") as conn:
            at = await self._db_now(conn)
            row = await self._insert_audit(
                conn,
                at,
                NewAudit(
                    incident.instance_id,
                    AuditAction(str(action)),
                    outcome,
                    incident.id,
                    str(incident.reason),
                    attempt,
                    detail,
                    round(duration, 6),
                ),
            )
            await conn.execute(update)
        self._emit(row)

    async def exhaust(self, incident: Incident, now: datetime) -> None:
        update = (
            sa.update(incidents)
            .where(incidents.c.id == incident.id)
            .where(incidents.c.state == str(IncidentState.OPEN))
            .values(state=str(IncidentState.EXHAUSTED), next_action_at=None, updated_at=now)
        )
        row_spec = NewAudit(
            incident.instance_id,
            AuditAction.EXHAUSTED,
            Outcome.OK,
            incident.id,
            str(incident.reason),
            incident.attempt,
            {"attempts": incident.attempt},
        )
        await self._change(update, row_spec, now, "exhaust incident")

    async def close(
        self,
        incident: Incident,
        state: IncidentState,
        now: datetime,
        actor: str,
        detail: Mapping[str, Any],
    ) -> None:
        update = (
            sa.update(incidents)
            .where(incidents.c.id == incident.id)
            .where(incidents.c.state.in_(OPEN_STATES))
            .values(state=str(state), closed_at=now, next_action_at=None, updated_at=now)
        )
        action = AuditAction(str(state))  # recovered, reset, dismissed
        row_spec = NewAudit(
            incident.instance_id,
            action,
            Outcome.OK,
            incident.id,
            str(incident.reason),
            incident.attempt,
            detail,
            actor=actor,
        )
        await self._change(update, row_spec, now, "close incident")

    async def pause(self, pause: Pause, now: datetime) -> None:
        values = {
            "instance_id": pause.instance_id,
            "until": pause.until,
            "reason": pause.reason,
            "actor": pause.actor,
            "created_at": now,
        }
        detail = {"until": pause.until.isoformat(), "reason": pause.reason}
        spec = NewAudit(
            pause.instance_id, AuditAction.PAUSED, Outcome.OK, detail=detail, actor=pause.actor
        )
        async with self._db.begin("pause instance") as conn:
            await conn.execute(sa.delete(pauses).where(pauses.c.instance_id == pause.instance_id))
            await conn.execute(sa.insert(pauses).values(values))
            row = await self._insert_audit(conn, now, spec)
        self._emit(row)

    async def resume(self, instance_id: str, actor: str) -> bool:
        spec = NewAudit(instance_id, AuditAction.RESUMED, Outcome.OK, actor=actor)
        async with self._db.begin("resume instance") as conn:
            now = await self._db_now(conn)
            active = sa.delete(pauses).where(pauses.c.instance_id == instance_id)
            if (await conn.execute(active.where(pauses.c.until > now))).rowcount == 0:
                await conn.execute(active)  # an expired pause is just tidied away
                return False
            row = await self._insert_audit(conn, now, spec)
        self._emit(row)
        return True

    async def append(self, row: NewAudit) -> AuditRow:
        async with self._db.begin("append audit") as conn:
            written = await self._insert_audit(conn, await self._db_now(conn), row)
        self._emit(written)
        return written

    # ---------------------------------------------------------------- helpers

    async def _change(self, update: sa.Update, spec: NewAudit, now: datetime, what: str) -> None:
        """Apply a conditional incident update and, only if it matched, its audit row."""
        async with self._db.begin(what) as conn:
            if (await conn.execute(update)).rowcount != 1:
                return
            row = await self._insert_audit(conn, now, spec)
        self._emit(row)

    async def _db_now(self, conn: AsyncConnection) -> datetime:
        return as_utc((await conn.execute(sa.select(self._db.now_expr()))).scalar_one())

    async def _insert_audit(self, conn: AsyncConnection, at: datetime, spec: NewAudit) -> AuditRow:
        values = {
            "at": at,
            "incident_id": spec.incident_id,
            "instance_id": spec.instance_id,
            "reason": spec.reason,
            "attempt": spec.attempt,
            "action": str(spec.action),
            "outcome": str(spec.outcome),
            "detail": json.dumps(dict(spec.detail), sort_keys=True, default=str),
            "duration": spec.duration,
            "actor": spec.actor,
        }
        new_id = (
            await conn.execute(sa.insert(audit).values(values).returning(audit.c.id))
        ).scalar_one()
        return AuditRow(
            new_id,
            at,
            spec.instance_id,
            spec.action,
            spec.outcome,
            spec.incident_id,
            spec.reason,
            spec.attempt,
            dict(spec.detail),
            spec.duration,
            spec.actor,
        )


def _incident(row: sa.Row[Any]) -> Incident:
    return Incident(
        id=row.id,
        instance_id=row.instance_id,
        reason=Reason(row.reason),
        state=IncidentState(row.state),
        attempt=row.attempt,
        opened_at=row.opened_at,
        next_action_at=row.next_action_at,
        closed_at=row.closed_at,
        last_action=Action(row.last_action) if row.last_action else None,
        process=row.process,
    )


def _audit_row(row: sa.Row[Any]) -> AuditRow:
    return AuditRow(
        id=row.id,
        at=row.at,
        instance_id=row.instance_id,
        action=AuditAction(row.action),
        outcome=Outcome(row.outcome),
        incident_id=row.incident_id,
        reason=row.reason,
        attempt=row.attempt,
        detail=json.loads(row.detail or "{}"),
        duration=row.duration,
        actor=row.actor,
    )
