"""The watchdog's own tables: incidents, pauses and the append-only audit trail.

Every state change of an incident and its audit row are written in one transaction.
Claims are conditional UPDATEs whose RETURNING names the writer that won. Audit rows
are only ever inserted; after each commit they are also handed to `emit` (the structlog
event on stdout).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from watchdog.core.model import (
    AuditAction,
    Incident,
    IncidentState,
    Outcome,
    Pause,
)
from watchdog.core.ports import (
    Claim,
    Closing,
    Finished,
    LedgerState,
    NewAudit,
    Opening,
)
from watchdog.store.audit import AuditSink, ignore_audit, insert_rows
from watchdog.store.database import Database
from watchdog.store.holds import IncidentHolds
from watchdog.store.pauses import PauseWrites
from watchdog.store.records import (
    ACTIONABLE,
    INCIDENT_COLUMNS,
    OPENING_COLUMNS,
    attempt_audit,
    incident_audit,
    incident_from,
    intent,
)
from watchdog.store.schema import (
    OPEN_STATES,
    UtcDateTime,
    incidents,
)
from watchdog.store.state import StateCache, bump


class SqlLedger(IncidentHolds, PauseWrites):
    """`max_cache_age`: open incidents and pauses are reloaded when their revision moved
    (every writer here bumps it) and at least this often (seconds), for a writer that
    does not (an older version mid-upgrade, a hand-made SQL fix)."""

    def __init__(
        self,
        db: Database,
        emit: AuditSink = ignore_audit,
        *,
        max_cache_age: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._emit = emit
        self._state = StateCache(db, max_cache_age, monotonic)

    # ---------------------------------------------------------------- reading

    async def load_open(self) -> dict[str, Incident]:
        return dict((await self._state.load()).incidents)

    async def load_pauses(self, now: datetime) -> dict[str, Pause]:
        return _in_force((await self._state.load()).pauses, now)

    async def load_state(self, now: datetime, revision: int | None = None) -> LedgerState:
        cached = await self._state.load(revision)
        fleet = tuple(p for p in cached.fleet_pauses if p.until > now)
        return LedgerState(cached.incidents, _in_force(cached.pauses, now), fleet)

    async def last_closed(self, instance_ids: Collection[str]) -> dict[str, Incident]:
        latest = (
            sa.select(sa.func.max(incidents.c.id))
            .where(self._db.among(incidents.c.instance_id, instance_ids))
            .where(incidents.c.state.not_in(OPEN_STATES))
            .group_by(incidents.c.instance_id)
        )
        query = sa.select(*INCIDENT_COLUMNS).where(incidents.c.id.in_(latest))
        async with self._db.connect("load closed incidents") as conn:
            rows = (await conn.execute(query)).all()
        return {row.instance_id: incident_from(row) for row in rows}

    async def incident_history(self, instance_id: str, limit: int) -> Sequence[Incident]:
        query = (
            sa.select(*INCIDENT_COLUMNS)
            .where(incidents.c.instance_id == instance_id)
            .order_by(incidents.c.id.desc())
            .limit(limit)
        )
        async with self._db.connect("incident history") as conn:
            rows = (await conn.execute(query)).all()
        return [incident_from(row) for row in rows]

    # ---------------------------------------------------------------- writing

    async def open_incidents(self, openings: Sequence[Opening], now: datetime) -> list[Incident]:
        if not openings:
            return []
        data = [
            (
                o.finding.instance_id,
                str(o.finding.reason),
                str(IncidentState.OPEN),
                o.carried,
                o.finding.process,
                o.continues,
                now,
                now,
                now,
                False,
            )
            for o in openings
        ]
        async with self._db.begin("open incidents") as conn:
            new_ids = [
                i
                for i, _at, _key in await insert_rows(
                    self._db, conn, incidents, OPENING_COLUMNS, data
                )
            ]
            specs = [
                NewAudit(
                    o.finding.instance_id,
                    AuditAction.DETECTED,
                    Outcome.OK,
                    new_id,
                    str(o.finding.reason),
                    o.carried,
                    o.detail(),
                )
                for o, new_id in zip(openings, new_ids, strict=True)
            ]
            rows = await self.insert_audits(conn, now, specs)
            revision = await bump(conn)
        for row in rows:  # logged once committed
            self._emit(row)
        opened = [
            Incident(
                new_id,
                o.finding.instance_id,
                o.finding.reason,
                IncidentState.OPEN,
                o.carried,
                now,
                now,
                process=o.finding.process,
            )
            for o, new_id in zip(openings, new_ids, strict=True)
        ]
        self._state.wrote(revision, opened)  # as inserted: OPENING_COLUMNS, from `now`
        return opened

    async def begin_actions(self, claims: Sequence[Claim], now: datetime) -> list[int | None]:
        """One conditional UPDATE for the whole batch: a claim wins when its incident is
        still actionable (or exhausted: a retry of its last rung, which leaves it so) at
        attempt N-1 (RETURNING names the winners), then the intent rows of the winners, in
        the same transaction."""
        if not claims:
            return []
        if len({c.incident.id for c in claims}) != len(claims):
            raise ValueError("one claim per incident per batch")
        update = self._db.memo("claim attempts", self._claim_statement)
        params = {
            **self._db.batch(
                "claims",
                [
                    (c.incident.id, c.attempt - 1, str(c.action), c.retry_at, c.spends_approval)
                    for c in claims
                ],
            ),
            "now": now,
        }
        async with self._db.begin("claim attempts") as conn:
            claimed = [incident_from(r) for r in await conn.execute(update, params)]
            won = {i.id for i in claimed}
            winners = [c for c in claims if c.incident.id in won]
            rows = await self.insert_audits(conn, now, [intent(c) for c in winners])
            revision = await bump(conn) if winners else None
        for row in rows:  # logged once committed
            self._emit(row)
        self._state.wrote(revision, claimed)
        ids = {c.incident.id: row.id for c, row in zip(winners, rows, strict=True)}
        return [ids.get(c.incident.id) for c in claims]

    def _claim_statement(self) -> sa.Update:
        exhausted, opened = str(IncidentState.EXHAUSTED), str(IncidentState.OPEN)
        claimed = self._db.rows(
            "claims",
            {
                "id": sa.Integer(),
                "prev": sa.Integer(),
                "action": sa.Text(),
                "due": UtcDateTime(),
                "approved": sa.Boolean(),
            },
        )
        return (
            sa.update(incidents)
            .where(incidents.c.id == claimed.c.id)
            .where(incidents.c.attempt == claimed.c.prev)
            .where(incidents.c.state.in_((*ACTIONABLE, exhausted)))
            .values(
                attempt=incidents.c.attempt + 1,
                last_action=claimed.c.action,
                next_action_at=claimed.c.due,
                updated_at=sa.bindparam("now", type_=UtcDateTime()),
                state=sa.case((incidents.c.state == exhausted, exhausted), else_=opened),
                held=None,  # the attempt goes on: nothing holds it any more
                approved_by=sa.case((claimed.c.approved, None), else_=incidents.c.approved_by),
            )
            .returning(*INCIDENT_COLUMNS)
        )

    async def finish_actions(self, finished: Sequence[Finished]) -> None:
        """The outcome rows (stamped with the database clock at commit) and each open
        incident's next due time, all in one transaction. Idempotent: an intent that has
        its outcome already gets no second one, so a write whose commit acknowledgement
        was lost may be written again."""
        if not finished:
            return
        specs = [
            attempt_audit(
                f.incident, f.action, f.outcome, f.attempt, f.detail, f.duration, f.intent_id
            )
            for f in finished
        ]
        set_next_due = self._db.memo("record outcomes", self._next_due_statement)
        due = self._db.batch(
            "due", [(f.incident.id, f.attempt, f.next_action_at) for f in finished]
        )
        async with self._db.begin("record outcomes") as conn:
            rows = await self.insert_audits(conn, None, specs)
            moved = [incident_from(r) for r in await conn.execute(set_next_due, due)]
            revision = await bump(conn)
        for row in rows:
            self._emit(row)
        self._state.wrote(revision, moved)

    def _next_due_statement(self) -> sa.Update:
        due = self._db.rows(
            "due", {"id": sa.Integer(), "attempt": sa.Integer(), "at": UtcDateTime()}
        )
        # The next due time moves only where the attempt is still the incident's latest,
        # and never earlier than it is: its host's restart may have deferred it meanwhile.
        later = sa.or_(incidents.c.next_action_at.is_(None), incidents.c.next_action_at < due.c.at)
        return (
            sa.update(incidents)
            .where(incidents.c.id == due.c.id)
            .where(incidents.c.attempt == due.c.attempt)
            .where(incidents.c.state == str(IncidentState.OPEN))
            .where(later)
            .values(next_action_at=due.c.at)
            .returning(*INCIDENT_COLUMNS)
        )

    async def exhaust_all(
        self, exhausted: Sequence[Incident], now: datetime, retry_at: datetime | None = None
    ) -> None:
        if not exhausted:
            return
        targets = self._db.rows("exhausting", {"id": sa.Integer()}, [(i.id,) for i in exhausted])
        update = (
            sa.update(incidents)
            .where(incidents.c.id == targets.c.id)
            .where(incidents.c.state.in_(ACTIONABLE))
            .values(state=str(IncidentState.EXHAUSTED), next_action_at=retry_at, updated_at=now)
        )
        audits = [
            (i.id, incident_audit(i, AuditAction.EXHAUSTED, {"attempts": i.attempt}))
            for i in exhausted
        ]
        await self._change_all("exhaust incidents", update, audits, now)

    async def close(
        self,
        incident: Incident,
        state: IncidentState,
        now: datetime,
        actor: str,
        detail: Mapping[str, Any],
    ) -> None:
        await self.close_all([Closing(incident, state, actor, detail)], now)

    async def close_all(self, closings: Sequence[Closing], now: datetime) -> None:
        if not closings:
            return
        targets = self._db.rows(
            "closing",
            {"id": sa.Integer(), "state": sa.Text()},
            [(c.incident.id, str(c.state)) for c in closings],
        )
        update = (
            sa.update(incidents)
            .where(incidents.c.id == targets.c.id)
            .where(incidents.c.state.in_(OPEN_STATES))
            .values(state=targets.c.state, closed_at=now, next_action_at=None, updated_at=now)
        )
        audits = [
            (
                c.incident.id,
                # recovered, reset, dismissed
                incident_audit(c.incident, AuditAction(str(c.state)), c.detail, actor=c.actor),
            )
            for c in closings
        ]
        await self._change_all("close incidents", update, audits, now)

    async def incident_counts(
        self, instance_ids: Collection[str], since: datetime
    ) -> dict[str, int]:
        """How many incidents each instance opened since `since`."""
        query = (
            sa.select(incidents.c.instance_id, sa.func.count())
            .where(self._db.among(incidents.c.instance_id, instance_ids))
            .where(incidents.c.opened_at >= since)
            .group_by(incidents.c.instance_id)
        )
        async with self._db.connect("count incidents") as conn:
            return {str(r[0]): int(r[1]) for r in await conn.execute(query)}


def _in_force(held: Mapping[str, Pause], now: datetime) -> dict[str, Pause]:
    return {i: p for i, p in held.items() if p.until > now}
