"""Retention: the leader deletes the watchdog's own history once it is old enough.

Three kinds of row go, each by its own rule, with cut-offs taken from the database clock
once per run:

- audit rows older than the audit cut-off, except an intent (`started`) that has no
  outcome yet: the next leader still has to audit it `interrupted`;
- closed incidents closed before the incident cut-off that no audit row names any more
  (audit rows name incidents by id; no foreign key holds them, so this rule does);
- alert outbox rows sent or given up, created before the outbox cut-off.

Rows go in batches of at most `batch`, one short transaction each, so no lock is held for
long on SQLite or PostgreSQL. A run that deleted anything is audited once, with its counts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from watchdog.core.errors import StoreError
from watchdog.core.model import FLEET, AuditAction, Outcome
from watchdog.core.ports import NewAudit
from watchdog.observability import get_logger
from watchdog.store.database import Database
from watchdog.store.ledger import SqlLedger
from watchdog.store.outbox import FAILED, SENT
from watchdog.store.schema import OPEN_STATES, audit, incidents, outbox

log = get_logger(component="retention")

BATCH = 1000  # rows per DELETE statement
PAUSE = 0.05  # seconds between batches: other writers (one at a time on SQLite) get a turn
DAY = timedelta(days=1)

Proceed = Callable[[], bool]  # asked between batches: False stops the run (shutdown, lead lost)
Condition = Callable[[sa.FromClause, datetime], sa.ColumnElement[bool]]


@dataclass(frozen=True, slots=True)
class Keep:
    """How long each kind of row is kept; None: forever."""

    audit: timedelta | None
    incidents: timedelta | None
    outbox: timedelta | None

    @classmethod
    def days(
        cls, audit_days: int, incidents_days: int, outbox_days: int, *, incidents_floor: float = 0.0
    ) -> Keep:
        """From `[retention]` (0: forever). Incidents are kept at least `incidents_floor`
        seconds: the reopen and flapping rules read closed incidents that recent."""
        floor = timedelta(seconds=incidents_floor)
        return cls(
            audit_days * DAY if audit_days else None,
            max(incidents_days * DAY, floor) if incidents_days else None,
            outbox_days * DAY if outbox_days else None,
        )

    @property
    def forever(self) -> bool:
        return self.audit is None and self.incidents is None and self.outbox is None


@dataclass(slots=True)
class Pruned:
    """What one run deleted, and before which time (None: that kind is kept forever)."""

    cutoffs: dict[str, datetime | None]
    counts: dict[str, int] = field(
        default_factory=lambda: {"audit": 0, "incidents": 0, "outbox": 0}
    )
    complete: bool = True  # False: stopped between batches (shutdown, lead lost, error)
    error: str | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def detail(self) -> dict[str, Any]:
        cutoffs = {k: None if at is None else at.isoformat() for k, at in self.cutoffs.items()}
        extra = {} if self.error is None else {"error": self.error}
        return {**self.counts, "cutoffs": cutoffs, "complete": self.complete, **extra}


class SqlRetention:
    def __init__(
        self,
        db: Database,
        ledger: SqlLedger,
        keep: Keep,
        *,
        batch: int = BATCH,
        pause: float = PAUSE,
    ) -> None:
        self._db = db
        self._ledger = ledger
        self._keep = keep
        self._batch = batch
        self._pause = pause

    async def run(self, proceed: Proceed = lambda: True) -> Pruned:
        """Delete what is past its cut-off; audit the run if it deleted anything. A store
        error stops the run (audited with what it deleted so far) and is raised."""
        pruned = Pruned(await self._cutoffs())
        try:
            await self._prune(pruned, proceed)
        except StoreError as exc:
            pruned.complete, pruned.error = False, str(exc)
            await self._audit_quietly(pruned)
            raise
        if pruned.total:
            await self._audit(pruned)
        return pruned

    async def _cutoffs(self) -> dict[str, datetime | None]:
        async with self._db.connect("read database clock for retention") as conn:
            now = await self._db.read_now(conn)
        keep = self._keep
        kept = {"audit": keep.audit, "incidents": keep.incidents, "outbox": keep.outbox}
        return {name: None if age is None else now - age for name, age in kept.items()}

    async def _prune(self, pruned: Pruned, proceed: Proceed) -> None:
        # Audit first: incidents whose last audit rows go now may go in the same run.
        for name, table, deletable, keyset in _KINDS:
            before = pruned.cutoffs[name]
            if before is None:
                continue
            deleted, complete = await self._batches(name, table, deletable, before, keyset, proceed)
            pruned.counts[name] += deleted
            if not complete:
                pruned.complete = False
                return

    async def _batches(
        self,
        name: str,
        table: sa.Table,
        deletable: Condition,
        before: datetime,
        keyset: bool,
        proceed: Proceed,
    ) -> tuple[int, bool]:
        """Delete batch after batch until one comes back short; (rows, finished)."""
        deleted, after = 0, 0
        while True:
            ids = await self._delete_batch(name, table, deletable, before, keyset, after)
            deleted += len(ids)
            if len(ids) < self._batch:
                return deleted, True
            after = max(ids) if keyset else after
            if not proceed():
                return deleted, False
            await asyncio.sleep(self._pause)

    async def _delete_batch(
        self,
        name: str,
        table: sa.Table,
        deletable: Condition,
        before: datetime,
        keyset: bool,
        after: int,
    ) -> list[int]:
        # The candidates are picked from an alias, so that the table's own columns in the
        # DELETE's WHERE are not correlated into the subquery; the DELETE checks the rule
        # again on the rows it locks.
        candidate = table.alias("candidate")
        chosen = sa.select(candidate.c.id).where(deletable(candidate, before))
        if keyset:
            chosen = chosen.where(candidate.c.id > after).order_by(candidate.c.id)
        else:
            # By time, then id: an intent (lower id) goes no later than its outcome, so
            # it never looks unanswered between two batches.
            chosen = chosen.order_by(candidate.c.at, candidate.c.id)
        chosen = chosen.limit(self._batch)
        delete = (
            sa.delete(table)
            .where(table.c.id.in_(chosen.scalar_subquery()), deletable(table, before))
            .returning(table.c.id)
        )
        async with self._db.begin(f"delete old {name} rows") as conn:
            return [int(i) for i in (await conn.execute(delete)).scalars()]

    async def _audit(self, pruned: Pruned) -> None:
        outcome = Outcome.OK if pruned.error is None else Outcome.FAILED
        await self._ledger.append(
            NewAudit(FLEET, AuditAction.RETENTION, outcome, detail=pruned.detail())
        )

    async def _audit_quietly(self, pruned: Pruned) -> None:
        """Audit a failed run's deletions if there were any. When that fails too (the
        database is likely away) the counts go to the log: the run's error is the one
        raised."""
        if not pruned.total:
            return
        try:
            await self._audit(pruned)
        except StoreError as exc:
            log.warning("retention_not_audited", audit_error=str(exc), **pruned.detail())


# ----------------------------------------------------------------------------- rules


def _old_audit(rows: sa.FromClause, before: datetime) -> sa.ColumnElement[bool]:
    """Older than the cut-off, and not an intent still waiting for its outcome (the same
    test as `SqlLedger.orphan_intents`, narrowed by instance so its index serves it)."""
    later = audit.alias("later")
    answered = sa.exists().where(
        later.c.instance_id == rows.c.instance_id,
        later.c.incident_id == rows.c.incident_id,
        later.c.attempt == rows.c.attempt,
        later.c.action == rows.c.action,
        later.c.id > rows.c.id,
    )
    return sa.and_(rows.c.at < before, sa.or_(rows.c.outcome != str(Outcome.STARTED), answered))


def _old_closed_incident(rows: sa.FromClause, before: datetime) -> sa.ColumnElement[bool]:
    """Closed before the cut-off and named by no audit row. An incident's audit rows carry
    its instance id: matching on it lets the audit table's instance index find them."""
    named = sa.exists().where(
        audit.c.instance_id == rows.c.instance_id, audit.c.incident_id == rows.c.id
    )
    return sa.and_(rows.c.state.not_in(OPEN_STATES), rows.c.closed_at < before, sa.not_(named))


def _old_settled_alert(rows: sa.FromClause, before: datetime) -> sa.ColumnElement[bool]:
    """Sent or given up, created before the cut-off; a pending row is never deleted."""
    return sa.and_(rows.c.state.in_((SENT, FAILED)), rows.c.created_at < before)


# name, table, rule, keyset. With a keyset each batch starts past the last id it deleted,
# so rows the rule keeps are read once a run, not once a batch; audit rows are picked
# through the index on their time instead.
_KINDS: tuple[tuple[str, sa.Table, Condition, bool], ...] = (
    ("audit", audit, _old_audit, False),
    ("incidents", incidents, _old_closed_incident, True),
    ("outbox", outbox, _old_settled_alert, True),
)
