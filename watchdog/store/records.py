"""The watchdog's rows and the domain values they hold: how incidents and audit rows
are read back, and the audit rows each kind of change appends."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

import sqlalchemy as sa

from watchdog.core.model import (
    ACTIONABLE_STATES,
    Action,
    AuditAction,
    AuditRow,
    Incident,
    IncidentState,
    Outcome,
    Reason,
)
from watchdog.core.ports import Claim, NewAudit
from watchdog.store.schema import incidents


def incident_audit(
    incident: Incident,
    action: AuditAction,
    detail: Mapping[str, Any],
    *,
    outcome: Outcome = Outcome.OK,
    attempt: int | None = None,
    actor: str = "watchdog",
) -> NewAudit:
    """An audit row about `incident` (its attempt unless another is given)."""
    return NewAudit(
        incident.instance_id,
        action,
        outcome,
        incident.id,
        str(incident.reason),
        incident.attempt if attempt is None else attempt,
        detail,
        actor=actor,
    )


def intent(claim: Claim) -> NewAudit:
    """The `started` row written before the call."""
    c = claim
    return attempt_audit(c.incident, c.action, Outcome.STARTED, c.attempt, c.detail or {})


def attempt_audit(
    incident: Incident,
    action: Action,
    outcome: Outcome,
    attempt: int,
    detail: Mapping[str, Any],
    duration: float | None = None,
    intent_id: int | None = None,
) -> NewAudit:
    """An attempt's audit row: its intent (`started`) or its outcome (of `intent_id`)."""
    return NewAudit(
        incident.instance_id,
        AuditAction(str(action)),
        outcome,
        incident.id,
        str(incident.reason),
        attempt,
        detail,
        None if duration is None else round(duration, 6),
        intent_id=intent_id,
    )


OPENING_COLUMNS = (
    "instance_id",
    "reason",
    "state",
    "attempt",
    "process",
    "continues_id",
    "opened_at",
    "updated_at",
    "next_action_at",
    "flapping",
)
AUDIT_COLUMNS = (  # and "at", stamped apart
    "incident_id",
    "instance_id",
    "reason",
    "attempt",
    "action",
    "outcome",
    "detail",
    "duration",
    "actor",
    "intent_id",
)
ACTIONABLE = tuple(sorted(str(s) for s in ACTIONABLE_STATES))  # as stored


# What an Incident is built from, in its field order (load_open reads thousands a cycle).
INCIDENT_COLUMNS = (
    incidents.c.id,
    incidents.c.instance_id,
    incidents.c.reason,
    incidents.c.state,
    incidents.c.attempt,
    incidents.c.opened_at,
    incidents.c.next_action_at,
    incidents.c.closed_at,
    incidents.c.last_action,
    incidents.c.process,
    incidents.c.flapping,
    incidents.c.held,
    incidents.c.approved_by,
)
# Dict lookups: an Enum call costs about twenty times as much.
_REASONS = {str(r): r for r in Reason}
_STATES = {str(s): s for s in IncidentState}
_ACTIONS = {str(a): a for a in Action}


def incident_from(row: Sequence[Any]) -> Incident:
    (id_, instance_id, reason, state, attempt, opened, next_at, closed) = row[:8]
    last, process, flap, held, approved_by = row[8:]
    return Incident(
        id_,
        instance_id,
        _REASONS[reason],
        _STATES[state],
        attempt,
        opened,
        next_at,
        closed,
        _ACTIONS[last] if last else None,
        process,
        bool(flap),
        json.loads(held) if held else None,
        approved_by,
    )


def _action(text: str) -> AuditAction:
    """The row's action; an action this version does not know stays its plain string."""
    try:
        return AuditAction(text)
    except ValueError:
        return cast(AuditAction, text)


def audit_row(row: sa.Row[Any]) -> AuditRow:
    """An audit row as read back (also by the alert feeder)."""
    return AuditRow(
        id=row.id,
        at=row.at,
        instance_id=row.instance_id,
        action=_action(row.action),
        outcome=Outcome(row.outcome),
        incident_id=row.incident_id,
        reason=row.reason,
        attempt=row.attempt,
        detail=json.loads(row.detail or "{}"),
        duration=row.duration,
        actor=row.actor,
        intent_id=row.intent_id,
    )
