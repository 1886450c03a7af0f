"""The fleet-wide state (brake, restarts) in memory."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from watchdog.core.model import (
    FLEET,
    AuditAction,
    AuditRow,
    HostRecord,
    Outcome,
)
from watchdog.core.ports import (
    NewAudit,
)
from watchdog.core.safety import Restart
from watchdog.testing.ledger import MemoryLedger

if TYPE_CHECKING:
    pass


class MemoryFleetState:
    """Restarts and the brake in memory, with `SqlFleetState`'s semantics."""

    def __init__(self, ledger: MemoryLedger) -> None:
        self.ledger = ledger
        self.restarts: list[tuple[Restart, list[str]]] = []
        self.brake_state: dict[str, Any] | None = None
        self.unjudgeable_state: dict[str, Any] | None = None
        self.backlog_state: dict[str, Any] | None = None
        self.grace_state: dict[str, Any] | None = None
        self.hosts_seen: dict[str, HostRecord] = {}

    async def recent_restarts(self, since: datetime) -> list[Restart]:
        return [r for r, _ids in self.restarts if r.at >= since]

    async def record_restart(self, process: str, at: datetime, instances: Sequence[str]) -> None:
        self.restarts.append((Restart(process, at), list(instances)))

    async def forget_restart(self, process: str, at: datetime) -> None:
        for n in range(len(self.restarts) - 1, -1, -1):
            if self.restarts[n][0] == Restart(process, at):
                del self.restarts[n]
                return

    async def hosts(self) -> dict[str, HostRecord]:
        return dict(self.hosts_seen)

    async def record_host(self, record: HostRecord) -> None:
        self.hosts_seen[record.process] = record

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

    async def backlog(self) -> dict[str, Any] | None:
        return self.backlog_state

    async def set_backlog(
        self, present: bool, now: datetime, detail: Mapping[str, Any]
    ) -> AuditRow:
        self.backlog_state = {"present": present, "since": now.isoformat(), **detail}
        action = AuditAction.BACKLOG if present else AuditAction.BACKLOG_CLEARED
        return await self.ledger.append(NewAudit(FLEET, action, Outcome.OK, detail=detail))
