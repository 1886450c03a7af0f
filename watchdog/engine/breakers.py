"""Circuit breakers applied to the recovery backends (api, db_flag, supervisor, systemd,
command): the engine asks before a rung is tried, reports every outcome, and the state is
saved so `watchdogctl status` can show it and a restart does not forget it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from watchdog.core.breaker import BreakerBoard, BreakerRules, BreakerState, Transition
from watchdog.core.model import FLEET, Action, AuditAction, Outcome
from watchdog.core.ports import BreakerStore, Ledger, NewAudit


class BackendBreakers:
    def __init__(
        self,
        rules: BreakerRules,
        names: Mapping[Action, str],
        ledger: Ledger,
        store: BreakerStore | None = None,
    ) -> None:
        self.board = BreakerBoard(rules)
        self._names = names
        self._ledger = ledger
        self._store = store

    def name(self, action: Action) -> str:
        return self._names.get(action, str(action))

    async def load(self) -> None:
        if self._store is not None:
            self.board.load(await self._store.load())

    def refuses(self, action: Action, now: datetime) -> bool:
        """The backend's breaker is open: a call now would be skipped. Unlike `allows`,
        asking takes no half-open trial slot."""
        breaker = self.board.get(self.name(action))
        breaker.poll(now)
        return breaker.state is BreakerState.OPEN

    def allows(self, action: Action, now: datetime) -> bool:
        breaker = self.board.get(self.name(action))
        breaker.poll(now)
        return breaker.allow(now)

    async def record(self, action: Action, ok: bool, now: datetime, error: str = "") -> None:
        """Count one call's outcome; an opening or closing breaker is audited."""
        breaker = self.board.get(self.name(action))
        transition = breaker.record_success(now) if ok else breaker.record_failure(now, error)
        if transition in (Transition.OPENED, Transition.CLOSED):
            snap = breaker.snapshot(now)
            detail = {
                "backend": snap.name,
                "failures": snap.failures,
                "total": snap.total,
                "failure_rate": round(snap.failure_rate, 3),
                "next_attempt_at": snap.next_attempt_at.isoformat()
                if snap.next_attempt_at
                else None,
                "last_error": snap.last_error,
            }
            action_row = (
                AuditAction.BREAKER_OPENED
                if transition is Transition.OPENED
                else AuditAction.BREAKER_CLOSED
            )
            await self._ledger.append(NewAudit(FLEET, action_row, Outcome.OK, detail=detail))

    async def save(self, now: datetime) -> None:
        dirty = self.board.dirty(now)
        if dirty and self._store is not None:
            await self._store.save(dirty, now)
            self.board.mark_saved(dirty)
