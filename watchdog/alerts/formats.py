"""What an alert says: pure functions from one audit row to the body a sink receives.

Three kinds of sink: generic JSON, Slack-compatible webhooks (`{"text": ...}`) and the
Alertmanager v2 API. Fleet-wide rows (brake, breakers, leadership) carry the instance
"*", shown as "fleet". Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from watchdog.core.model import FLEET, AuditRow

ALERTMANAGER_PATH: Final = "/api/v2/alerts"
SINK_KINDS: Final = ("json", "slack", "alertmanager")
_SUMMARY_CHARS = 300
_VALUE_CHARS = 160


@dataclass(frozen=True, slots=True)
class AlertKind:
    """How one audit action shows up as an alert."""

    alertname: str  # Alertmanager's alertname (a resolve names the alert it ends)
    severity: str  # warning | critical
    resolves: bool = False  # True: this row ends an earlier alert instead of raising one
    outcome: str = "ok"  # the audit outcome that makes the row alert-worthy


KINDS: Final[Mapping[str, AlertKind]] = {
    # A process restart is alerted on its intent row: the restart is under way.
    "process_restart": AlertKind("WatchdogProcessRestart", "warning", outcome="started"),
    "exhausted": AlertKind("WatchdogRecoveryExhausted", "critical"),
    "exhausted_retry": AlertKind("WatchdogRecoveryExhausted", "critical"),
    "suppressed": AlertKind("WatchdogRestartSuppressed", "warning", outcome="skipped"),
    "held": AlertKind("WatchdogRestartHeld", "warning", outcome="skipped"),
    "brake_engaged": AlertKind("WatchdogBrakeEngaged", "critical"),
    "brake_released": AlertKind("WatchdogBrakeEngaged", "critical", resolves=True),
    "breaker_opened": AlertKind("WatchdogBreakerOpen", "warning"),
    "breaker_closed": AlertKind("WatchdogBreakerOpen", "warning", resolves=True),
    "leader_changed": AlertKind("WatchdogLeaderChanged", "warning"),
    "unjudgeable": AlertKind("WatchdogUnjudgeableRows", "warning"),
    "unjudgeable_cleared": AlertKind("WatchdogUnjudgeableRows", "warning", resolves=True),
}

ALERT_ACTIONS: Final = frozenset(KINDS)


def alert_worthy(row: AuditRow) -> bool:
    """Whether this audit row raises (or resolves) an alert; dry runs never do, nor a
    lead that moved from no other node (`first`: a lone daemon's start is no change)."""
    kind = KINDS.get(str(row.action))
    if kind is None or row.detail.get("dry_run") or row.detail.get("first"):
        return False
    return str(row.outcome) == kind.outcome


# ------------------------------------------------------------------------- summaries


def summary(row: AuditRow) -> str:
    """One line for humans, e.g. "wa-05: process_restart (attempt 6) after stuck_connecting"."""
    describe = _SUMMARIES.get(str(row.action), _generic)
    return _clip(describe(row, row.detail), _SUMMARY_CHARS)


def _process_restart(row: AuditRow, d: Mapping[str, Any]) -> str:
    target = f" of {_v(d['target'])}" if d.get("target") else ""
    return f"{_who(row)}: process_restart{target} (attempt {row.attempt}) after {row.reason}"


def _exhausted_retry(row: AuditRow, d: Mapping[str, Any]) -> str:
    return (
        f"{_who(row)}: still unhealthy after the ladder ran out ({row.reason}); its last rung "
        f"{_v(d.get('rung'))} tried again (attempt {row.attempt})"
    )


def _exhausted(row: AuditRow, d: Mapping[str, Any]) -> str:
    attempts = d.get("attempts", row.attempt)
    return (
        f"{_who(row)}: recovery exhausted after {attempts} attempts ({row.reason}); "
        "waiting for recovery or an operator's reset"
    )


def _suppressed(row: AuditRow, d: Mapping[str, Any]) -> str:
    process = f" of {_v(d['process'])}" if d.get("process") else ""
    until = f" until {_v(d['until'])}" if d.get("until") else ""
    return (
        f"{_who(row)}: process_restart{process} suppressed (attempt {row.attempt}): "
        f"restart budget spent{until}"
    )


def _held(row: AuditRow, d: Mapping[str, Any]) -> str:
    process = f" of {_v(d['process'])}" if d.get("process") else ""
    return (
        f"{_who(row)}: process_restart{process} held (attempt {row.attempt}): "
        f"{d.get('healthy', '?')} of {d.get('monitored', '?')} instances it hosts are healthy; "
        f"approve one with `watchdogctl approve {_v(row.instance_id)}`"
    )


def _brake_engaged(_row: AuditRow, d: Mapping[str, Any]) -> str:
    return (
        f"fleet: brake engaged ({_share(d)} unhealthy); "
        "no db_flag or process_restart until it is released"
    )


def _brake_released(_row: AuditRow, d: Mapping[str, Any]) -> str:
    return f"fleet: brake released ({_share(d)} unhealthy)"


def _breaker_opened(_row: AuditRow, d: Mapping[str, Any]) -> str:
    error = f": {_v(d['last_error'])}" if d.get("last_error") else ""
    failures = f" after {d['failures']} failures" if d.get("failures") is not None else ""
    return f"fleet: {_v(d.get('backend', '?'))} breaker opened{failures}{error}"


def _breaker_closed(_row: AuditRow, d: Mapping[str, Any]) -> str:
    return f"fleet: {_v(d.get('backend', '?'))} breaker closed"


def _leader_changed(row: AuditRow, d: Mapping[str, Any]) -> str:
    node = d.get("node") or d.get("leader") or d.get("node_id") or row.actor
    where = f" ({_v(d['host'])} pid {d['pid']})" if d.get("host") and d.get("pid") else ""
    return f"watchdog leader is now {_v(node)}{where}"


def _unjudgeable(_row: AuditRow, d: Mapping[str, Any]) -> str:
    columns = ", ".join(f"{_v(c)} ×{n}" for c, n in dict(d.get("columns") or {}).items())
    sample = ", ".join(_v(i) for i in d.get("sample") or ())
    return (
        f"fleet: {d.get('count', '?')} row(s) cannot be judged ({columns}), e.g. {sample}; "
        "they are never acted on: see the daemon's `instance_unjudgeable` log lines"
    )


def _unjudgeable_cleared(_row: AuditRow, _d: Mapping[str, Any]) -> str:
    return "fleet: every row can be judged again"


def _generic(row: AuditRow, _d: Mapping[str, Any]) -> str:
    return f"{_who(row)}: {row.action} {row.outcome}"


_SUMMARIES: Final[dict[str, Callable[[AuditRow, Mapping[str, Any]], str]]] = {
    "process_restart": _process_restart,
    "held": _held,
    "exhausted": _exhausted,
    "exhausted_retry": _exhausted_retry,
    "suppressed": _suppressed,
    "brake_engaged": _brake_engaged,
    "brake_released": _brake_released,
    "breaker_opened": _breaker_opened,
    "breaker_closed": _breaker_closed,
    "leader_changed": _leader_changed,
    "unjudgeable": _unjudgeable,
    "unjudgeable_cleared": _unjudgeable_cleared,
}


def _who(row: AuditRow) -> str:
    return "fleet" if row.instance_id == FLEET else _v(row.instance_id)


def _share(d: Mapping[str, Any]) -> str:
    return f"{d.get('unhealthy', '?')} of {d.get('monitored', '?')}"


def _v(value: Any) -> str:
    return _clip(str(value), _VALUE_CHARS)


def _clip(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


# -------------------------------------------------------------------------- payloads


def payload(kind: str, row: AuditRow) -> Any:
    """The JSON body a sink of `kind` receives for `row`."""
    if kind == "json":
        return json_payload(row)
    if kind == "slack":
        return slack_payload(row)
    if kind == "alertmanager":
        return alertmanager_payload(row)
    raise ValueError(f"unknown sink kind {kind!r}; use one of {', '.join(SINK_KINDS)}")


def encode(kind: str, row: AuditRow) -> str:
    """`payload` as the JSON text the outbox stores and the sender posts unchanged."""
    return json.dumps(payload(kind, row), sort_keys=True, default=str, ensure_ascii=False)


def json_payload(row: AuditRow) -> dict[str, Any]:
    return {
        "event": str(row.action),
        "instance": row.instance_id,
        "attempt": row.attempt,
        "reason": row.reason,
        "detail": dict(row.detail),
        "at": row.at.isoformat(),
        "summary": summary(row),
        "audit_id": row.id,  # stable across redeliveries: receivers can drop duplicates
    }


def slack_payload(row: AuditRow) -> dict[str, Any]:
    # Slack reads <...> as links and mentions (<!channel>): values from the application's
    # table (instance ids, process names) are shown as text, never as markup.
    text = summary(row).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return {"text": text}


def alertmanager_payload(row: AuditRow) -> list[dict[str, Any]]:
    """One alert for POST <url>/api/v2/alerts; a resolving row sends `endsAt` instead.

    The labels of a resolve equal those of the alert it ends (same alertname, instance,
    severity and backend), so Alertmanager matches them by fingerprint."""
    kind = KINDS.get(str(row.action)) or AlertKind("WatchdogEvent", "warning")
    labels = {"alertname": kind.alertname, "instance": row.instance_id, "severity": kind.severity}
    if str(row.action).startswith("breaker_") and row.detail.get("backend"):
        labels["backend"] = str(row.detail["backend"])
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": {"summary": summary(row), "description": description(row)},
    }
    if kind.resolves:
        alert["endsAt"] = row.at.isoformat()
    else:
        alert["startsAt"] = row.at.isoformat()
    return [alert]


def description(row: AuditRow) -> str:
    """The audit row's facts as `key=value` pairs, for Alertmanager's description."""
    facts: dict[str, Any] = {
        "event": str(row.action),
        "outcome": str(row.outcome),
        "incident": row.incident_id,
        "reason": row.reason,
        "attempt": row.attempt,
        "audit_id": row.id,
        **row.detail,
    }
    shown = (f"{key}={_v(value)}" for key, value in facts.items() if value is not None)
    return _clip("; ".join(shown), 1000)


def target_url(kind: str, url: str) -> str:
    """Where a sink's payload is posted: Alertmanager's v2 API below its base URL."""
    if kind == "alertmanager":
        return url.rstrip("/") + ALERTMANAGER_PATH
    return url
