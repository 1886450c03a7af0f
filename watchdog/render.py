"""What the operator sees: durations in, tables and JSON out. No I/O beyond strings."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from watchdog.breaker import BreakerSnapshot
from watchdog.model import AuditRow, Incident, IncidentState, Pause
from watchdog.observability import one_line
from watchdog.policy import EscalationRules, is_paused, step_for_attempt

_CELL_CHARS = 90  # a column is at most this wide; `--json` has every value whole
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


MAX_DURATION = 10 * 365.25 * 86400  # ten years: beyond, a time is no longer a date


def parse_duration(text: str) -> float:
    """'90', '90s', '5m', '2h', '1h30m', '1d' → seconds, at most ten years. ValueError on
    anything else."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    elif text and re.fullmatch(rf"(?:{_DURATION.pattern})+", text):
        seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(text))
    else:
        raise ValueError(f"{text!r} is not a duration; use e.g. 90s, 15m, 2h or 1d")
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    if seconds > MAX_DURATION:
        raise ValueError(f"{text!r} is longer than ten years; give a shorter duration")
    return seconds


def parse_since(text: str, now: datetime) -> datetime:
    """A duration back from `now` ('2h') or an ISO-8601 time ('2026-11-29T10:00:00Z';
    without an offset, UTC). ValueError on anything else."""
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        return now - timedelta(seconds=parse_duration(text))
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def human_delta(seconds: float) -> str:
    """12s, 4m05s, 2h10m: short and sortable by eye."""
    whole = round(abs(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


@dataclass(frozen=True, slots=True)
class Tracked:
    """One line of `watchdogctl status`: an instance with an incident or a pause."""

    instance_id: str
    incident: Incident | None
    pause: Pause | None


def tracked(incidents: Mapping[str, Incident], pauses: Mapping[str, Pause]) -> list[Tracked]:
    ids = sorted(set(incidents) | set(pauses))
    return [Tracked(i, incidents.get(i), pauses.get(i)) for i in ids]


def status_record(item: Tracked, rules: EscalationRules, now: datetime) -> dict[str, Any]:
    incident, paused = item.incident, is_paused(item.pause, now)
    state = "paused" if paused else (str(incident.state) if incident else "paused")
    next_action: str | None = None
    next_at: datetime | None = None
    if incident is not None and incident.state in (IncidentState.OPEN, IncidentState.SUPPRESSED):
        step = step_for_attempt(rules, incident.attempt + 1)
        next_action = str(step.action) if step else "exhaust"
        next_at = incident.next_action_at
    return {
        "id": item.instance_id,
        "state": state,
        "reason": str(incident.reason) if incident else None,
        "attempt": incident.attempt if incident else 0,
        "last_action": str(incident.last_action) if incident and incident.last_action else None,
        "next_action": next_action,
        "next_action_at": next_at.isoformat() if next_at else None,
        "paused_until": item.pause.until.isoformat() if item.pause and paused else None,
        "pause_reason": item.pause.reason if item.pause and paused else None,
        "flapping": bool(incident and incident.flapping),
        "incident": incident.id if incident else None,
        "opened_at": incident.opened_at.isoformat() if incident else None,
    }


def _when(iso: str | None, now: datetime) -> str:
    if iso is None:
        return "-"
    delta = (datetime.fromisoformat(iso) - now).total_seconds()
    return f"in {human_delta(delta)}" if delta > 0 else "due"


def status_table(records: Sequence[Mapping[str, Any]], now: datetime) -> str:
    if not records:
        return "no tracked instances: every enabled instance is healthy"
    header = ("INSTANCE", "STATE", "REASON", "ATTEMPT", "NEXT", "WHEN", "PAUSED UNTIL")
    rows = [
        (
            r["id"],
            r["state"] + (" (flapping)" if r.get("flapping") else ""),
            r["reason"] or "-",
            str(r["attempt"]),
            r["next_action"] or "-",
            _when(r["next_action_at"], now),
            _short_time(r["paused_until"]),
        )
        for r in records
    ]
    return table(header, rows)


def audit_table(rows: Sequence[AuditRow]) -> str:
    if not rows:
        return "no audit rows match"
    header = ("AT", "INSTANCE", "ACTION", "OUTCOME", "ATTEMPT", "REASON", "ACTOR", "DETAIL")
    lines = [
        (
            row.at.strftime("%Y-%m-%d %H:%M:%S"),
            row.instance_id,
            str(row.action),
            str(row.outcome),
            "-" if row.attempt is None else str(row.attempt),
            row.reason or "-",
            row.actor,
            _short_detail(row),
        )
        for row in rows
    ]
    return table(header, lines)


def _short_detail(row: AuditRow) -> str:
    detail = dict(row.detail)
    if row.duration is not None:
        detail["duration"] = round(row.duration, 3)
    text = json.dumps(detail, sort_keys=True, default=str) if detail else ""
    return text if len(text) <= 90 else text[:87] + "..."


def _short_time(iso: str | None) -> str:
    return "-" if iso is None else datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    # Values from the application's table (ids, process names) reach the terminal here:
    # control characters are shown escaped, never interpreted, and a long one is cut.
    rows = [[_cell(str(c)) for c in row] for row in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in (header, *rows)
    ]
    return "\n".join(lines)


def _cell(text: str) -> str:
    shown = one_line(text)
    return shown if len(shown) <= _CELL_CHARS else shown[: _CELL_CHARS - 1] + "…"


def as_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)


def brake_line(brake: Mapping[str, Any] | None) -> str:
    if not brake or not brake.get("engaged"):
        return "brake: released"
    return (
        f"brake: ENGAGED since {_short_time(brake.get('since'))} ({brake.get('unhealthy')} "
        f"of {brake.get('monitored')} unhealthy): no db_flag or process_restart"
    )


def breaker_table(snapshots: Sequence[BreakerSnapshot]) -> str:
    if not snapshots:
        return "breakers: all closed (no calls yet)"
    header = (
        "BACKEND",
        "BREAKER",
        "FAILURES",
        "TOTAL",
        "FAILED",
        "RATE",
        "LAST FAILURE",
        "NEXT ATTEMPT",
    )
    rows = [
        (
            s.name,
            str(s.state),
            str(s.failures),
            str(s.total),
            str(s.total_failures),
            f"{s.failure_rate:.0%}",
            s.last_failure_at.strftime("%Y-%m-%d %H:%M:%S") if s.last_failure_at else "-",
            s.next_attempt_at.strftime("%Y-%m-%d %H:%M:%S") if s.next_attempt_at else "-",
        )
        for s in snapshots
    ]
    return table(header, rows)


def nodes_table(nodes: Sequence[Mapping[str, Any]], now: datetime) -> str:
    """The watchdog replicas; the leader is the one that acts (`lost`: a former leader
    whose lock a successor took)."""
    live = [n for n in nodes if n["role"] != "gone"]
    if not live:
        return "nodes: none running"
    header = ("NODE", "ROLE", "PID", "VERSION", "LAST GOOD CYCLE")
    rows = [
        (
            str(n["node"]),
            str(n["role"]).upper() if n["role"] == "leader" else str(n["role"]),
            str(n["pid"]),
            str(n["version"]),
            _ago(n["last_good_cycle_at"], now),
        )
        for n in live
    ]
    return table(header, rows)


def _ago(iso: str | None, now: datetime) -> str:
    if iso is None:
        return "-"
    return human_delta((now - datetime.fromisoformat(iso)).total_seconds()) + " ago"
