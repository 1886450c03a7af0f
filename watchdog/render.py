"""What the operator sees: durations in, tables and JSON out, colour only where it is
wanted. No I/O beyond strings (and asking a stream whether it is a terminal)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import click

from watchdog.core.breaker import BreakerSnapshot
from watchdog.core.model import Action, AuditAction, AuditRow, Census, Outcome, Pause
from watchdog.core.situation import human_delta, stamp

if TYPE_CHECKING:
    from watchdog.engine.report import CycleReport

_CELL_CHARS = 90  # a column is at most this wide; `--json` has every value whole
_NARROWEST = 8  # columns are not narrowed below this to fit the terminal
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


MAX_DURATION = 10 * 365.25 * 86400  # ten years: beyond, a time is no longer a date

Tone = Literal["good", "warn", "bad"]
_TONES: dict[str, dict[str, Any]] = {
    "good": {"fg": "green"},
    "warn": {"fg": "yellow"},
    "bad": {"fg": "red", "bold": True},
}
CLEAR_SCREEN = "\x1b[H\x1b[2J"  # home the cursor, clear the screen: a frame drawn in place


def is_terminal(stream: object) -> bool:
    """Whether `stream` is a terminal (a closed stream, or one without `isatty`, is not)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return callable(isatty) and bool(isatty())
    except (ValueError, OSError):
        return False


def colour_enabled(stream: object, environ: Mapping[str, str] | None = None) -> bool:
    """The one decision about colour: only on a terminal, and never when NO_COLOR is set
    to anything but the empty string (https://no-color.org)."""
    env = os.environ if environ is None else environ
    return not env.get("NO_COLOR") and is_terminal(stream)


def paint(text: str, tone: Tone | None, colour: bool) -> str:
    """`text` in its tone's colour when `colour`; `text` is shown as it is, so whatever
    came from a table must have been through `one_line` already."""
    return click.style(text, **_TONES[tone]) if colour and tone else text


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


def status_table(
    records: Sequence[Mapping[str, Any]], census: Census | None, *, colour: bool = False
) -> str:
    if not records:
        if census is not None and census.unhealthy == census.unjudgeable == 0:
            return paint(
                "no instance needs attention: the table says all "
                f"{census.monitored} monitored instances are healthy",
                "good",
                colour,
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
    return table(header, rows, tones=_status_tone if colour else None)


_VERDICT_TONES: dict[str, Tone] = {
    "healthy": "good",
    "unhealthy": "bad",
    "unjudgeable": "warn",
}
_STATE_TONES: dict[str, Tone] = {
    "exhausted": "bad",
    "unhealthy": "bad",
    "open": "warn",
    "paused": "warn",
    "suppressed": "warn",
    "unjudgeable": "warn",
}


def _status_tone(column: int, shown: str) -> Tone | None:
    """VERDICT, STATE and WHEN: red for what is wrong or spent, yellow for what waits."""
    if column == 1:
        return _VERDICT_TONES.get(shown)
    if column == 2:
        return _STATE_TONES.get(shown.split(" ")[0])
    if column == 6:
        if shown.startswith("exhausted"):
            return "bad"
        if shown.startswith(("held", "skipped")):
            return "warn"
    return None


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


def fleet_line(census: Census | None, table_name: str, error: str, *, colour: bool = False) -> str:
    """What the application's table says now, in one line."""
    table_name = one_line(table_name)
    if census is None:
        return paint(f"fleet: cannot read table {table_name}: {one_line(error)}", "bad", colour)
    c = census
    healthy = paint(f"{c.healthy} healthy", "good" if c.healthy else None, colour)
    unhealthy = paint(f"{c.unhealthy} unhealthy", "bad" if c.unhealthy else None, colour)
    unjudgeable = paint(f"{c.unjudgeable} unjudgeable", "warn" if c.unjudgeable else None, colour)
    return (
        f"fleet: {c.rows} rows in {table_name}: {healthy}, {unhealthy}, {unjudgeable}, "
        f"{c.disabled} disabled, {c.ignored} ignored ({c.monitored} monitored)"
    )


def acting_line(detail: str, leader: str | None, now: datetime, *, colour: bool = False) -> str:
    """Who acts for the fleet (red when no daemon does), as of the database's clock."""
    return (
        f"acting: {paint(one_line(detail), 'bad' if leader is None else 'good', colour)} "
        f"(as of {stamp(now)})"
    )


def watch_header(now: datetime, every: float) -> str:
    """The first line of each `status --watch` frame."""
    return f"watchdogctl status at {stamp(now)}, every {every:g}s, Ctrl-C to quit"


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


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    width: int | None = None,
    *,
    tones: Callable[[int, str], Tone | None] | None = None,
) -> str:
    """Aligned columns that fit `width` (the terminal's, or 200 when not a terminal): the
    widest columns are narrowed first, and a cut value ends with `…`. `tones` (column,
    shown value) colours a data cell, after it was escaped and cut."""
    # Values from the application's table (ids, process names) reach the terminal here:
    # control characters are shown escaped, never interpreted, and a long one is cut.
    rows = [[_cell(str(c), _CELL_CHARS) for c in row] for row in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    limit = width if width is not None else shutil.get_terminal_size((200, 24)).columns
    while sum(widths) + 2 * (len(widths) - 1) > limit and max(widths) > _NARROWEST:
        widest = widths.index(max(widths))
        widths[widest] -= 1
    lines = [
        "  ".join(_cell(str(c), w).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()
    ]
    for row in rows:
        cells = []
        for column, (value, w) in enumerate(zip(row, widths, strict=True)):
            shown = _cell(str(value), w)  # escaped and cut: only now may it be coloured
            tone = tones(column, shown) if tones is not None else None
            cells.append(paint(shown, tone, True) + " " * (w - len(shown)))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _cell(text: str, width: int) -> str:
    shown = one_line(text)
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def as_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)


def brake_line(brake: Mapping[str, Any] | None, *, colour: bool = False) -> str:
    if not brake or not brake.get("engaged"):
        return "brake: " + paint("released", "good", colour)
    return paint(
        f"brake: ENGAGED since {_short_time(brake.get('since'))} ({brake.get('unhealthy')} "
        f"of {brake.get('monitored')} unhealthy): no db_flag or process_restart",
        "bad",
        colour,
    )


_BREAKER_TONES: dict[str, Tone] = {"closed": "good", "half_open": "warn", "open": "bad"}


def fleet_pause_line(pause: Pause) -> str:
    """A fleet pause in force, for `status`: `paused --process app until … by bob (deploy)`."""
    return (
        f"paused {one_line(str(pause.selector))} until {stamp(pause.until)} by "
        f"{one_line(pause.actor)} ({one_line(pause.reason)})"
    )


def breaker_table(snapshots: Sequence[BreakerSnapshot], *, colour: bool = False) -> str:
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
    return table(header, rows, tones=_breaker_tone if colour else None)


def _breaker_tone(column: int, shown: str) -> Tone | None:
    return _BREAKER_TONES.get(shown) if column == 1 else None


def nodes_table(nodes: Sequence[Mapping[str, Any]], now: datetime, *, colour: bool = False) -> str:
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
    return table(header, rows, tones=_node_tone if colour else None)


def _node_tone(column: int, shown: str) -> Tone | None:
    if column != 1:
        return None
    return "good" if shown == "LEADER" else "warn" if shown in ("stale", "lost") else None


def _ago(iso: str | None, now: datetime) -> str:
    if iso is None:
        return "-"
    return human_delta((now - datetime.fromisoformat(iso)).total_seconds()) + " ago"


_SUMMARY_IDS = 10  # instance ids named per line of the `run --once` summary
_INCIDENT_WORDS = (
    (AuditAction.DETECTED, "opened"),
    (AuditAction.RECOVERED, "resolved"),
    (AuditAction.EXHAUSTED, "exhausted"),
    (AuditAction.DISMISSED, "dismissed"),
)
_NOTED = (  # audited by a cycle, worth a word in its summary
    AuditAction.HELD,
    AuditAction.SUPPRESSED,
    AuditAction.FLAPPING,
    AuditAction.HOST_RESTARTED,
    AuditAction.BRAKE_ENGAGED,
    AuditAction.BRAKE_RELEASED,
    AuditAction.BREAKER_OPENED,
    AuditAction.BREAKER_CLOSED,
    AuditAction.EXHAUSTED_RETRY,
)


def once_summary(
    report: CycleReport | None, audits: Sequence[AuditRow], *, dry_run: bool, code: int
) -> str:
    """`run --once` for people, on a terminal: what the cycle found and what it did (or,
    in a dry run, would have done), from its report and the audit rows it wrote."""
    title = "run --once --dry-run: nothing was done" if dry_run else "run --once"
    if report is None:
        why = (
            "the cycle failed (see the log lines above); no action was taken"
            if code
            else "another watchdog leads: this run took no action"
        )
        return f"{title}: {why}"
    lines = [f"{title} (database clock {stamp(report.now)}):"]
    rows = f"{report.rows_total} rows, " if report.rows_total is not None else ""
    lines.append(
        f"  found: {rows}{report.monitored} monitored, {report.unhealthy} unhealthy, "
        f"{len(report.unjudgeable)} unjudgeable"
    )
    counts = {a: sum(1 for r in audits if r.action == a) for a, _ in _INCIDENT_WORDS}
    verb = "would be " if dry_run else ""
    lines.append(
        "  incidents: " + ", ".join(f"{counts[a]} {verb}{word}" for a, word in _INCIDENT_WORDS)
    )
    lines += _rung_lines(audits, dry_run) or ["  actions: none"]
    noted = [f"{a} {n}" for a in _NOTED if (n := sum(1 for r in audits if r.action == a))]
    if noted:
        lines.append("  also audited: " + ", ".join(noted))
    brake = "would hold" if dry_run else "ENGAGED"
    lines.append(f"  brake: {brake if report.brake else 'released'}")
    if code:
        lines.append("  exit 1: see the log lines above")
    return "\n".join(lines)


def _rung_lines(audits: Sequence[AuditRow], dry_run: bool) -> list[str]:
    """One line per rung that was used: its outcomes, with the instances named."""
    lines = []
    for action in Action:
        rows = [r for r in audits if str(r.action) == str(action)]
        if not rows:
            continue
        answered = {r.intent_id for r in rows if r.intent_id is not None}
        unfinished = [r for r in rows if r.outcome == Outcome.STARTED and r.id not in answered]
        parts = []
        for outcome in (Outcome.OK, Outcome.FAILED, Outcome.SKIPPED, Outcome.INTERRUPTED):
            ids = [r.instance_id for r in rows if r.outcome == outcome]
            if ids:
                word = "would run on" if dry_run and outcome == Outcome.SKIPPED else outcome
                parts.append(f"{word} {len(ids)} ({_some(ids)})")
        if unfinished:
            parts.append(
                f"no outcome yet {len(unfinished)} ({_some([r.instance_id for r in unfinished])})"
            )
        lines.append(f"  {action}: " + "; ".join(parts))
    return lines


def _some(ids: Sequence[str]) -> str:
    """The first ids in order (actions finish in any order), escaped; then a count."""
    ids = sorted(ids)
    shown = ", ".join(one_line(_instance(i)) for i in ids[:_SUMMARY_IDS])
    return shown + (f", … {len(ids) - _SUMMARY_IDS} more" if len(ids) > _SUMMARY_IDS else "")
