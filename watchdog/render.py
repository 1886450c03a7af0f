"""What the operator sees: durations in, tables and JSON out. No I/O beyond strings."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from watchdog.core.breaker import BreakerSnapshot
from watchdog.core.model import AuditRow, Census
from watchdog.core.situation import human_delta, stamp

_CELL_CHARS = 90  # a column is at most this wide; `--json` has every value whole
_NARROWEST = 8  # columns are not narrowed below this to fit the terminal
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


MAX_DURATION = 10 * 365.25 * 86400  # ten years: beyond, a time is no longer a date


def one_line(text: str) -> str:
    """`text` with line breaks and other control characters escaped: an instance id or a
    process name from the application's table can never forge a line of ours."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


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
        if not re.search(r"\d{4}-\d", text):
            return now - timedelta(seconds=parse_duration(text))
        raise ValueError(
            f"{text!r} is not an ISO-8601 time (2026-11-29T10:00:00Z) nor a duration (2h)"
        ) from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def status_table(records: Sequence[Mapping[str, Any]], census: Census | None) -> str:
    if not records:
        if census is not None and census.unhealthy == census.unjudgeable == 0:
            return (
                "no instance needs attention: the table says all "
                f"{census.monitored} monitored instances are healthy"
            )
        return "no instance listed"
    header = ("INSTANCE", "VERDICT", "STATE", "REASON", "ATTEMPT", "NEXT", "WHEN")
    rows = [
        (
            _instance(r["id"]),
            r["verdict"] or "?",
            r["state"] + (" (flapping)" if r.get("flapping") else ""),
            r["reason"] or "-",
            str(r["attempt"]),
            r["next_action"] or "-",
            r["when"],
        )
        for r in records
    ]
    return table(header, rows)


def explanation(e: Mapping[str, Any]) -> str:
    """`explain` for people: the row, the verdict, the incident and every guard."""
    lines = [f"instance {one_line(str(e['id']))}  (database clock {_short_time(e['now'])})"]
    if e["row"] is not None:
        reading = e["reading"] or {}
        lines.append("row:")
        for column, value in e["row"].items():
            how = f"  [{reading[column]}]" if column in reading else ""
            shown = "NULL" if value is None else one_line(str(value))
            lines.append(f"  {column:<20} {shown}{how}")
    lines.append(f"verdict: {e['verdict'] or 'unknown'}: {e['rule']}")
    incident = e["incident"]
    if incident is None:
        lines.append("incident: none")
    else:
        lines.append(
            f"incident {incident['id']}: {incident['state']} {incident['reason']}, attempt "
            f"{incident['attempt']}" + (f" ({incident['rung']})" if incident["rung"] else "")
        )
    lines.append(f"next: {e['next_action'] or 'nothing'}: {e['when']}")
    lines.append(f"acting: {e['acting']}")
    lines.append("guards:")
    for guard in e["guards"]:
        mark = "ok  " if guard["ok"] else "HOLD"
        lines.append(f"  {mark} {guard['name']:<10} {one_line(str(guard['detail']))}")
    blocked = ", ".join(e["blocked_by"]) or "nothing: the next action runs when due"
    lines.append(f"blocked by: {blocked}")
    return "\n".join(lines)


def _instance(instance_id: str | None) -> str:
    """An id as shown in a table: a NULL or empty one is named, not left blank."""
    if instance_id is None:
        return "(NULL id)"
    return instance_id or '""'


def fleet_line(census: Census | None, table_name: str, error: str) -> str:
    """What the application's table says now, in one line."""
    if census is None:
        return f"fleet: cannot read table {table_name}: {error}"
    c = census
    return (
        f"fleet: {c.rows} rows in {table_name}: {c.healthy} healthy, {c.unhealthy} unhealthy, "
        f"{c.unjudgeable} unjudgeable, {c.disabled} disabled, {c.ignored} ignored "
        f"({c.monitored} monitored)"
    )


def audit_table(rows: Sequence[AuditRow]) -> str:
    if not rows:
        return "no audit rows match"
    header = ("AT", "INSTANCE", "ACTION", "OUTCOME", "ATTEMPT", "REASON", "ACTOR", "DETAIL")
    lines = [
        (
            stamp(row.at),
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
    return "-" if iso is None else stamp(datetime.fromisoformat(iso))


def table(header: Sequence[str], rows: Sequence[Sequence[str]], width: int | None = None) -> str:
    """Aligned columns that fit `width` (the terminal's, or 200 when not a terminal): the
    widest columns are narrowed first, and a cut value ends with `…`."""
    # Values from the application's table (ids, process names) reach the terminal here:
    # control characters are shown escaped, never interpreted, and a long one is cut.
    rows = [[_cell(str(c), _CELL_CHARS) for c in row] for row in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    limit = width if width is not None else shutil.get_terminal_size((200, 24)).columns
    while sum(widths) + 2 * (len(widths) - 1) > limit and max(widths) > _NARROWEST:
        widest = widths.index(max(widths))
        widths[widest] -= 1
    lines = [
        "  ".join(_cell(str(c), w).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in (header, *rows)
    ]
    return "\n".join(lines)


def _cell(text: str, width: int) -> str:
    shown = one_line(text)
    return shown if len(shown) <= width else shown[: width - 1] + "…"


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
            stamp(s.last_failure_at) if s.last_failure_at else "-",
            stamp(s.next_attempt_at) if s.next_attempt_at else "-",
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
