"""Fleet-wide state of the watchdog: the process restarts it started (for the restart
budgets), the processes hosting instances as last seen, and the mass-failure brake.
Brake changes are audited in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from watchdog.core.model import (
    FLEET,
    AuditAction,
    AuditRow,
    Generation,
    HostRecord,
    Outcome,
    RestartedBy,
)
from watchdog.core.ports import NewAudit
from watchdog.core.safety import Restart
from watchdog.store.database import Database, as_utc
from watchdog.store.ledger import SqlLedger
from watchdog.store.schema import flags, hosts, restarts

BRAKE = "brake"
UNJUDGEABLE = "unjudgeable"
GRACE = "grace"
BACKLOG = "backlog"


class SqlFleetState:
    def __init__(self, db: Database, ledger: SqlLedger) -> None:
        self._db = db
        self._ledger = ledger

    async def recent_restarts(self, since: datetime) -> list[Restart]:
        query = sa.select(restarts.c.process, restarts.c.at).where(restarts.c.at >= since)
        async with self._db.connect("recent restarts") as conn:
            return [Restart(r.process, r.at) for r in await conn.execute(query)]

    async def record_restart(self, process: str, at: datetime, instances: Sequence[str]) -> None:
        values = {"process": process, "at": at, "instances": json.dumps(list(instances))}
        async with self._db.begin("record restart") as conn:
            await conn.execute(sa.insert(restarts).values(values))

    async def forget_restart(self, process: str, at: datetime) -> None:
        one = (
            sa.select(restarts.c.id)
            .where(restarts.c.process == process, restarts.c.at == at)
            .order_by(restarts.c.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        async with self._db.begin("forget restart") as conn:
            await conn.execute(sa.delete(restarts).where(restarts.c.id == one))

    async def hosts(self) -> dict[str, HostRecord]:
        async with self._db.connect("read hosts") as conn:
            rows = (await conn.execute(sa.select(hosts))).all()
        return {
            r.process: HostRecord(
                r.process,
                Generation(r.pid, r.started),
                as_utc(r.seen_at),
                None if r.restarted_at is None else as_utc(r.restarted_at),
                None if r.restarted_by is None else RestartedBy(r.restarted_by),
                r.incident_id,
            )
            for r in rows
        }

    async def record_host(self, record: HostRecord) -> None:
        values = {
            "process": record.process,
            "pid": record.generation.pid,
            "started": record.generation.started,
            "seen_at": record.seen_at,
            "restarted_at": record.restarted_at,
            "restarted_by": None if record.restarted_by is None else str(record.restarted_by),
            "incident_id": record.incident_id,
        }
        async with self._db.begin("record host") as conn:
            await conn.execute(sa.delete(hosts).where(hosts.c.process == record.process))
            await conn.execute(sa.insert(hosts).values(values))

    async def brake(self) -> dict[str, Any] | None:
        """The brake's last recorded state: {"engaged": bool, ...} or None if never set."""
        return await self._flag(BRAKE)

    async def set_brake(self, engaged: bool, now: datetime, detail: Mapping[str, Any]) -> AuditRow:
        action = AuditAction.BRAKE_ENGAGED if engaged else AuditAction.BRAKE_RELEASED
        return await self._set_flag(BRAKE, {"engaged": engaged}, action, now, detail)

    async def grace(self) -> dict[str, Any] | None:
        """The last grace the leader started: {"until": iso time, ...} or None."""
        return await self._flag(GRACE)

    async def set_grace(
        self, until: datetime, now: datetime, detail: Mapping[str, Any]
    ) -> AuditRow:
        full = {**detail, "until": until.isoformat()}
        return await self._set_flag(GRACE, {}, AuditAction.GRACE, now, full)

    async def unjudgeable(self) -> dict[str, Any] | None:
        """Whether rows that cannot be judged were last reported: {"present": bool, ...}."""
        return await self._flag(UNJUDGEABLE)

    async def set_unjudgeable(
        self, present: bool, now: datetime, detail: Mapping[str, Any]
    ) -> AuditRow:
        action = AuditAction.UNJUDGEABLE if present else AuditAction.UNJUDGEABLE_CLEARED
        return await self._set_flag(UNJUDGEABLE, {"present": present}, action, now, detail)

    async def backlog(self) -> dict[str, Any] | None:
        """Whether the last cycle left openings or actions to the next: {"present": bool, ...}."""
        return await self._flag(BACKLOG)

    async def set_backlog(
        self, present: bool, now: datetime, detail: Mapping[str, Any]
    ) -> AuditRow:
        action = AuditAction.BACKLOG if present else AuditAction.BACKLOG_CLEARED
        return await self._set_flag(BACKLOG, {"present": present}, action, now, detail)

    async def _flag(self, name: str) -> dict[str, Any] | None:
        query = sa.select(flags.c.value).where(flags.c.name == name)
        async with self._db.connect(f"read {name}") as conn:
            value = (await conn.execute(query)).scalar_one_or_none()
        return None if value is None else dict(json.loads(value))

    async def _set_flag(
        self,
        name: str,
        state: Mapping[str, Any],
        action: AuditAction,
        now: datetime,
        detail: Mapping[str, Any],
    ) -> AuditRow:
        """Store a fleet-wide state and audit its change, in one transaction."""
        value = json.dumps({**state, "since": now.isoformat(), **detail})
        spec = NewAudit(FLEET, action, Outcome.OK, detail=detail)
        async with self._db.begin(f"set {name}") as conn:
            await conn.execute(sa.delete(flags).where(flags.c.name == name))
            await conn.execute(sa.insert(flags).values(name=name, value=value, updated_at=now))
            row = await self._ledger.insert_audit(conn, now, spec)
        self._ledger.emit(row)
        return row
