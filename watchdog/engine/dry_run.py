"""A dry run: every decision a live daemon would take, recorded once with outcome
`skipped`, and nothing else changed. It keeps what a live daemon would have written,
so that its next cycles decide as the live daemon would."""

from __future__ import annotations

from collections.abc import Mapping

from watchdog.core.model import AuditAction, Incident, Outcome
from watchdog.core.policy import Act, Decision, Dismiss, Exhaust, Open, Resolve
from watchdog.core.ports import BATCH, Ledger, NewAudit, chunks


class DryRun:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        # What was last recorded per instance. Nothing changes in a dry run, so the same
        # would-be decision comes back every cycle; it is audited once, not each time.
        self._seen: dict[tuple[str, type], tuple[object, ...]] = {}
        # Incidents it would have closed (instance id → incident id).
        self._closed: dict[str, int] = {}
        # The last view, and what it was made from (a steady cycle reuses it).
        self._view: tuple[Mapping[str, Incident], Mapping[str, Incident]] | None = None

    def view(
        self, incidents: Mapping[str, Incident], findings: Mapping[str, object]
    ) -> Mapping[str, Incident]:
        """The open incidents as a live daemon would have them: one this dry run would have
        resolved or dismissed is out of view while its instance stays out of the findings
        (a live daemon closed it), and back in view once the instance is unhealthy again
        (the incident is in fact still open)."""
        closed = self._closed
        last = self._view
        same = last is not None and last[0] is incidents  # the ledger's unchanged cache
        back = list(closed.keys() & findings.keys())  # in C: the findings may be thousands
        if not same:
            back += [i for i in closed if i not in incidents]
        for instance_id in back:
            del closed[instance_id]
        if same and not back and last is not None:
            return last[1]
        if not closed:
            view = incidents
        else:
            copy = dict(incidents)  # a copy, then deletions: cheaper than filtering each entry
            for instance_id, incident_id in closed.items():
                if copy[instance_id].id == incident_id:
                    del copy[instance_id]
            view = copy
        self._view = (incidents, view)
        return view

    async def record(
        self, decisions: list[Decision], incidents: Mapping[str, Incident]
    ) -> list[Act]:
        """Audit the decisions not recorded yet, remember the closings; the would-be
        actions back.

        A decision already recorded for its instance (same action, attempt, incident and
        reason) is not recorded again; an instance with no decision this cycle is forgotten,
        so it is recorded afresh if it comes back."""
        seen: dict[tuple[str, type], tuple[object, ...]] = {}
        rows: list[NewAudit] = []
        acts: list[Act] = []
        closing = False
        for decision in decisions:
            key, signature = _signature(decision)
            seen[key] = signature
            if self._seen.get(key) != signature:
                rows.append(_row(decision, incidents))
            if isinstance(decision, Act):
                acts.append(decision)
            elif isinstance(decision, Resolve | Dismiss):
                self._closed[decision.incident.instance_id] = decision.incident.id
                closing = True
        if closing:
            self._view = None
        for chunk in chunks(rows, BATCH):
            await self._ledger.append_all(chunk)
        self._seen = seen
        return acts


def _signature(decision: Decision) -> tuple[tuple[str, type], tuple[object, ...]]:
    """(instance, kind of decision) and what would be recorded for it, cheaply: a dry-run
    daemon compares thousands of these a cycle and records only the changed ones."""
    match decision:
        case Dismiss(incident=incident) | Resolve(incident=incident):
            return (incident.instance_id, type(decision)), (incident.id, incident.attempt)
        case Open(finding=finding):
            return (finding.instance_id, Open), (finding.reason, decision.carried_attempts)
        case Exhaust(instance_id=instance_id, attempt=attempt):
            return (instance_id, Exhaust), (attempt,)
        case Act(instance_id=instance_id, action=action, attempt=attempt, finding=finding):
            return (instance_id, Act), (action, attempt, finding.reason)
    raise AssertionError(f"unknown decision {decision!r}")


def _row(decision: Decision, incidents: Mapping[str, Incident]) -> NewAudit:
    detail = {"dry_run": True}
    match decision:
        case Dismiss(incident=incident, why=why):
            return NewAudit(
                incident.instance_id,
                AuditAction.DISMISSED,
                Outcome.SKIPPED,
                incident.id,
                str(incident.reason),
                incident.attempt,
                {**detail, "why": why},
            )
        case Resolve(incident=incident):
            return NewAudit(
                incident.instance_id,
                AuditAction.RECOVERED,
                Outcome.SKIPPED,
                incident.id,
                str(incident.reason),
                incident.attempt,
                detail,
            )
        case Open(finding=finding):
            detail_open = {**detail, "age": round(finding.age, 3), "status": finding.status}
            return NewAudit(
                finding.instance_id,
                AuditAction.DETECTED,
                Outcome.SKIPPED,
                None,
                str(finding.reason),
                decision.carried_attempts,
                detail_open,
            )
        case Exhaust(instance_id=instance_id, attempt=attempt):
            incident_id = incidents[instance_id].id if instance_id in incidents else None
            return NewAudit(
                instance_id,
                AuditAction.EXHAUSTED,
                Outcome.SKIPPED,
                incident_id,
                None,
                attempt,
                detail,
            )
        case Act():
            existing = incidents.get(decision.instance_id)
            return NewAudit(
                decision.instance_id,
                AuditAction(str(decision.action)),
                Outcome.SKIPPED,
                existing.id if existing else None,
                str(decision.finding.reason),
                decision.attempt,
                detail,
            )
