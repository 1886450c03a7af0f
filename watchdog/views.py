"""What `watchdogctl status` and `explain` show, gathered from the database now: the
application's table as the watchdog reads it, the incidents and pauses, the fleet-wide
holds (brake, grace, breakers), the actions in flight and who acts. Every time is the
database's clock. What it all means for one instance is `situation.situate`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from watchdog.config import Settings
from watchdog.core.breaker import BreakerSnapshot, BreakerState
from watchdog.core.errors import WatchdogError
from watchdog.core.model import (
    Action,
    AuditRow,
    Census,
    Incident,
    Pause,
    RowFacts,
    Scan,
    Unjudgeable,
    Verdict,
)
from watchdog.core.policy import (
    UNREADABLE,
    EscalationRules,
    is_paused,
    pause_of,
    step_for_attempt,
)
from watchdog.core.situation import Facts, human_delta, situate, when
from watchdog.store.judging import rule_of, why_of
from watchdog.store.nodes import Node
from watchdog.store.readings import Reading
from watchdog.wiring import Runtime, breaker_names

STALE_INTERVALS = 3  # a node whose last good cycle is older than this many intervals is stale


@dataclass(frozen=True, slots=True)
class Acting:
    """Who acts for the fleet, as the node rows say."""

    leader: str | None  # None: no daemon is acting
    detail: str


@dataclass(frozen=True, slots=True)
class FleetView:
    now: datetime
    census: Census | None  # None: the table could not be read (`table_failure` says why)
    table_failure: WatchdogError | None
    scan: Scan | None
    incidents: Mapping[str, Incident]
    pauses: Mapping[str, Pause]
    fleet_pauses: Sequence[Pause]
    unmonitored: Mapping[str, str]  # incident's instance → why it left the watchdog's care
    nodes: Sequence[Node]
    acting: Acting
    brake: Mapping[str, Any] | None
    backlog: Mapping[str, Any] | None
    grace_until: datetime | None
    breakers: Sequence[BreakerSnapshot]
    open_breakers: Mapping[Action, datetime | None]
    in_flight: frozenset[int]  # incident ids with an intent still without its outcome
    queued: Mapping[int, datetime]  # of them, those waiting for their pace: until when
    reading: Reading | None  # how the table's values were read (None: they were not)

    @property
    def table_error(self) -> str:
        """Why the table could not be read ("" when it was)."""
        return "" if self.table_failure is None else str(self.table_failure)

    unjudged: Mapping[str, Unjudgeable]  # the named rows that cannot be judged, by id

    def facts(self, instance_id: str, row: RowFacts | None = None) -> Facts:
        """What is known of one instance (`row`: its row read apart, for `explain`)."""
        verdict, why = self._verdict(instance_id, row)
        incident = self.incidents.get(instance_id)
        return Facts(
            now=self.now,
            verdict=verdict,
            why=why,
            incident=incident,
            pause=pause_of(self.pauses, self.fleet_pauses, instance_id, self._process(instance_id)),
            leader=self.acting.leader,
            leader_detail=self.acting.detail,
            brake=bool(self.brake and self.brake.get("engaged")),
            grace_until=self.grace_until,
            in_flight=incident is not None and incident.id in self.in_flight,
            queued_until=self.queued.get(incident.id) if incident is not None else None,
            open_breakers=self.open_breakers,
            backlog=self.backlog,
        )

    def _process(self, instance_id: str) -> str | None:
        """The instance's process as last seen (for a fleet pause by process)."""
        finding = self.scan.findings.get(instance_id) if self.scan is not None else None
        if finding is not None:
            return finding.process
        incident = self.incidents.get(instance_id)
        return incident.process if incident is not None else None

    def listed(self) -> list[str]:
        """The instances `status` lists: with an incident or a pause, unhealthy, or that
        cannot be judged (an unhealthy one without an incident is listed too)."""
        ids = set(self.incidents) | set(self.pauses) | set(self.unjudged)
        if self.scan is not None:
            ids |= set(self.scan.findings)
        return sorted(ids)

    def reason(self, instance_id: str) -> str | None:
        """Why the scan lists an instance: its finding's reason or the unreadable value."""
        finding = self.scan.findings.get(instance_id) if self.scan is not None else None
        if finding is not None:
            return str(finding.reason)
        bad = self.unjudged.get(instance_id)
        return why_of(bad) if bad is not None else None

    def _verdict(self, instance_id: str, row: RowFacts | None) -> tuple[Verdict | None, str]:
        if row is not None:
            return row.verdict, row.rule
        if self.scan is None:
            return None, self.table_error
        finding = self.scan.findings.get(instance_id)
        if finding is not None:
            return Verdict.UNHEALTHY, rule_of(finding)
        bad = self.unjudged.get(instance_id)
        if bad is not None:
            return Verdict.UNJUDGEABLE, why_of(bad)
        why = self.unmonitored.get(instance_id)
        if why is None:
            return Verdict.HEALTHY, "healthy when read"
        if why == UNREADABLE:
            return Verdict.UNJUDGEABLE, "a value the rules need cannot be read"
        verdicts = {"deleted": Verdict.DELETED, "disabled": Verdict.DISABLED}
        return verdicts.get(why, Verdict.IGNORED), why


async def fleet_view(rt: Runtime) -> FleetView:
    settings = rt.settings
    now = await rt.instances.now()
    state = await rt.ledger.load_state(now)
    census, scan, failure, unmonitored, reading = None, None, None, {}, None
    try:
        # The daemon's store was checked at its start (and `/status` shares it).
        reading = rt.instances.checked or await rt.instances.check()
        scan = await rt.instances.scan()
        census = await rt.instances.census(scan)
        gone = [i for i in state.incidents if i not in scan.findings]
        unmonitored = await rt.instances.unmonitored(gone) if gone else {}
    except WatchdogError as exc:  # the watchdog's own records are still worth showing
        failure = exc
    grace = await rt.fleet.grace()
    nodes = await rt.nodes.all()
    breakers = await rt.breaker_store.load()
    orphans = await rt.ledger.orphan_intents(instances=list(state.incidents))
    return FleetView(
        now=now,
        census=census,
        table_failure=failure,
        scan=scan,
        incidents=state.incidents,
        pauses=state.pauses,
        fleet_pauses=state.fleet_pauses,
        unmonitored=unmonitored,
        nodes=nodes,
        acting=acting(nodes, now, settings.detection.interval),
        brake=await rt.fleet.brake(),
        backlog=await rt.fleet.backlog(),
        grace_until=_time(grace.get("until")) if grace else None,
        breakers=breakers,
        open_breakers=_open(breakers, breaker_names(settings)),
        in_flight=frozenset(r.incident_id for r in orphans if r.incident_id is not None),
        queued=_queued(orphans, now),
        reading=reading,
        unjudged={u.instance_id: u for u in scan.unjudgeable if u.instance_id} if scan else {},
    )


def status_records(view: FleetView, rules: EscalationRules) -> list[dict[str, Any]]:
    """One JSON-ready record per listed instance (`status --json`, `/status`), and one per
    row whose id is NULL (it cannot be named, but it is not hidden)."""
    records = [status_record(view.facts(i), i, rules, view.reason(i)) for i in view.listed()]
    nameless = [u for u in view.scan.unjudgeable if u.instance_id is None] if view.scan else []
    for bad in nameless:
        why = why_of(bad)
        facts = Facts(
            view.now, Verdict.UNJUDGEABLE, why, None, None, view.acting.leader, view.acting.detail
        )
        records.append(status_record(facts, None, rules, why))
    return records


def status_record(
    facts: Facts, instance_id: str | None, rules: EscalationRules, reason: str | None
) -> dict[str, Any]:
    situation = situate(facts, rules)
    incident, pause, now = facts.incident, facts.pause, facts.now
    paused = is_paused(pause, now)
    if paused:
        state = "paused"
    elif incident is not None:
        state = str(incident.state)
    else:
        state = str(facts.verdict) if facts.verdict is not None else "unknown"
    at = situation.next_action_at
    return {
        "id": instance_id,
        "state": state,
        "verdict": None if facts.verdict is None else str(facts.verdict),
        "reason": str(incident.reason) if incident else reason,
        "attempt": incident.attempt if incident else 0,
        "last_action": str(incident.last_action) if incident and incident.last_action else None,
        "next_action": situation.next_action,
        "next_action_at": at.isoformat() if at else None,
        "when": when(situation, now),
        "blocked_by": situation.blocked_by,
        "paused_until": pause.until.isoformat() if pause and paused else None,
        "pause_reason": pause.reason if pause and paused else None,
        "pause_selector": str(pause.selector) if pause and paused and pause.selector else None,
        "flapping": bool(incident and incident.flapping),
        "incident": incident.id if incident else None,
        "opened_at": incident.opened_at.isoformat() if incident else None,
    }


async def explain_instance(rt: Runtime, instance_id: str) -> dict[str, Any] | None:
    """`explanation` of one instance read now; None when it is neither in the table nor
    in the watchdog's records. Raises the table's failure when the table, unread, may
    well hold it."""
    view = await fleet_view(rt)
    row = await rt.instances.inspect_row(instance_id) if view.scan is not None else None
    history = await rt.ledger.incident_history(instance_id, 1)
    if row is None and not history and instance_id not in view.pauses:
        if view.table_failure is not None:
            raise view.table_failure
        return None
    if row is None and view.scan is not None:
        row = RowFacts(instance_id, Verdict.DELETED, "the row is gone from the table", {})
    return explanation(view, instance_id, row, history, rt.settings)


def explanation(
    view: FleetView,
    instance_id: str,
    row: RowFacts | None,
    history: Sequence[Incident],
    settings: Settings,
) -> dict[str, Any]:
    """`explain`: the row and how it was read, the verdict and its rule, the incident,
    and every guard, as one JSON-ready object."""
    facts = view.facts(instance_id, row)
    situation = situate(facts, settings.escalation.rules())
    incident = facts.incident or (history[0] if history else None)
    reason: str | None = None
    if row is not None and row.finding is not None:
        reason = str(row.finding.reason)
    elif row is not None and row.unjudgeable is not None:
        reason = f"{row.unjudgeable.column}: {row.unjudgeable.why}"
    at = situation.next_action_at
    reading = view.reading.describe(settings.instances) if view.reading is not None else None
    return {
        "id": instance_id,
        "verdict": None if facts.verdict is None else str(facts.verdict),
        "reason": reason,
        "rule": facts.why,
        "row": dict(row.raw) if row is not None else None,
        "reading": reading,
        "incident": _incident(incident, settings) if incident else None,
        "next_action": situation.next_action,
        "next_action_at": at.isoformat() if at else None,
        "when": when(situation, facts.now),
        "blocked_by": situation.blocked_by,
        "guards": [g.as_json() for g in situation.guards],
        "acting": view.acting.detail,
        "now": facts.now.isoformat(),
    }


def _incident(incident: Incident, settings: Settings) -> dict[str, Any]:
    step = step_for_attempt(settings.escalation.rules(), incident.attempt)
    return {
        "id": incident.id,
        "state": str(incident.state),
        "reason": str(incident.reason),
        "attempt": incident.attempt,
        "rung": str(step.action) if step and incident.attempt else None,
        "opened_at": incident.opened_at.isoformat(),
        "next_action_at": incident.next_action_at.isoformat() if incident.next_action_at else None,
        "closed_at": incident.closed_at.isoformat() if incident.closed_at else None,
        "flapping": incident.flapping,
        "held": dict(incident.held) if incident.held else None,
        "approved_by": incident.approved_by,
    }


def acting(nodes: Sequence[Node], now: datetime, interval: float) -> Acting:
    """The leader whose last good cycle is recent; else no daemon acts, and the last node
    seen is named."""
    limit = timedelta(seconds=STALE_INTERVALS * interval)
    for node in nodes:
        good = node.last_good_cycle_at
        if node.role == "leader" and good is not None and now - good <= limit:
            age = human_delta((now - good).total_seconds())
            return Acting(node.node_id, f"{node.node_id} leads (last good cycle {age} ago)")
    seen = [n for n in nodes if n.updated_at is not None]
    if not seen:
        return Acting(None, "no daemon is acting: none has ever run against this database")
    last = max(seen, key=lambda n: n.updated_at or now)
    assert last.updated_at is not None
    ago = human_delta((now - last.updated_at).total_seconds())
    return Acting(
        None,
        f"no daemon is acting: no node completed a cycle within {STALE_INTERVALS} × interval "
        f"(last seen: {last.node_id}, {last.role}, {ago} ago)",
    )


def pause_record(pause: Pause) -> dict[str, Any]:
    """One pause in force, as `pauses --json` and `/status` show it."""
    return {
        "selector": pause.selector.as_json() if pause.selector else {"id": pause.instance_id},
        "until": pause.until.isoformat(),
        "reason": pause.reason,
        "actor": pause.actor,
    }


def node_role(node: Node, now: datetime, interval: float) -> str:
    """The role to show: `stale` for a leader or standby that stopped checking in without
    saying so (`gone` said so; `lost` was demoted by a successor)."""
    if node.role not in ("leader", "standby"):
        return node.role
    limit = timedelta(seconds=STALE_INTERVALS * interval)
    if node.updated_at is None or now - node.updated_at > limit:
        return "stale"
    return node.role


def node_record(node: Node, now: datetime, interval: float) -> dict[str, Any]:
    return {**node.as_json(), "role": node_role(node, now, interval)}


def _open(
    breakers: Sequence[BreakerSnapshot], names: Mapping[Action, str]
) -> dict[Action, datetime | None]:
    by_name = {b.name: b for b in breakers}
    return {
        action: by_name[name].next_attempt_at
        for action, name in names.items()
        if name in by_name and by_name[name].state is BreakerState.OPEN
    }


def _queued(intents: Sequence[AuditRow], now: datetime) -> dict[int, datetime]:
    """The intents whose call waits for its backend's pace (`queued_until` in the intent),
    by incident: until when."""
    waiting: dict[int, datetime] = {}
    for intent in intents:
        until = _time(intent.detail.get("queued_until"))
        if intent.incident_id is not None and until is not None and until > now:
            waiting[intent.incident_id] = until
    return waiting


def _time(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


async def fleet_status(runtime: Runtime) -> dict[str, Any]:
    """/status: the same view as `watchdogctl status --json`, with the fleet around it."""
    view = await fleet_view(runtime)
    interval = runtime.settings.detection.interval
    return {
        "now": view.now.isoformat(),
        "fleet": asdict(view.census) if view.census else None,
        "table_error": view.table_error or None,
        "acting": view.acting.detail,
        "nodes": [node_record(n, view.now, interval) for n in view.nodes],
        "breakers": [asdict(b) for b in view.breakers],
        "brake": view.brake,
        "fleet_pauses": [pause_record(p) for p in view.fleet_pauses],
        "incidents": status_records(view, runtime.settings.escalation.rules()),
    }
