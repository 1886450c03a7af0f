"""One row of the detection query's aggregate, read into the pure core's terms: an
`InstanceRow` for `policy.classify`, or an `Unjudgeable` saying which value could not be
read and what to do about it. Never raises on a row's content."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from watchdog.config import InstancesSettings
from watchdog.core.model import Finding, Reason, RowFacts, Unjudgeable, Verdict
from watchdog.core.policy import (
    DetectionRules,
    InstanceRow,
    classify,
    judge_values,
    time_left,
    time_to_threshold,
)

_RAW_CHARS = 64  # of a value that cannot be read, as reported

FIX_ID = "give the row a non-empty text id: an instance without one cannot be addressed"
FIX_ENABLED = "write true or false (also 1/0, yes/no, t/f) into the enabled column"
FIX_STATUS = "the application must write a status into the row"
FIX_PROCESS = "write the hosting program's name as text, or NULL for the configured default"
FIX_TIME = (
    "write a time the watchdog can read (timestamptz; ISO-8601 or SQLite's format; an epoch "
    "number), or set [instances] epoch_unit to how the application writes numbers"
)
FIX_AHEAD = (
    "check the clock of the host that writes it, and [instances] timezone and epoch_unit: "
    "a time ahead of the database clock by more than [detection] max_clock_skew is not believed"
)

Judged = tuple[dict[str, Finding], tuple[Unjudgeable, ...], float | None]


def judge(
    rows: Sequence[Sequence[Any]],
    mapping: InstancesSettings,
    rules: DetectionRules,
    known: Mapping[str, Finding] | None = None,
) -> Judged:
    """The findings among `rows`, the rows that cannot be judged, and the soonest deadline
    among the healthy rest (seconds). Each row is [id, status, process, status age,
    heartbeat age, raw status_changed_at, raw heartbeat, raw enabled], a raw value set
    only where it could not be read (the three are left out when none is), or only the
    id of a row among `known` that is still unhealthy (its finding is reused). A bad value
    is its row's problem: that row is reported and skipped, every other row is judged as
    usual."""
    findings: dict[str, Finding] = {}
    unjudgeable: list[Unjudgeable] = []
    deadline: float | None = None
    skew = rules.max_clock_skew
    for fields in rows:
        if len(fields) == 1 and known is not None:  # still unhealthy, judged last time
            instance_id = fields[0]
            finding = known.get(instance_id)
            if finding is not None:
                findings[instance_id] = finding
                continue
        if _plain(fields, skew):  # nearly every row: judged from its values directly
            instance_id, status, process, status_age, heartbeat_age = fields[:5]
            finding = judge_values(instance_id, status, status_age, heartbeat_age, process, rules)
            if finding is not None:
                findings[instance_id] = finding
                continue
            left = time_left(status, status_age, heartbeat_age, rules)
            if left is not None and (deadline is None or left < deadline):
                deadline = left
            continue
        instance = read(fields, mapping, rules)
        if isinstance(instance, Unjudgeable):
            unjudgeable.append(instance)
            continue
        finding = classify(instance, rules)
        if finding is not None:
            findings[finding.instance_id] = finding
            continue
        left = time_to_threshold(instance, rules)
        if left is not None and (deadline is None or left < deadline):
            deadline = left
    return findings, tuple(unjudgeable), deadline


def read(
    fields: Sequence[Any], mapping: InstancesSettings, rules: DetectionRules
) -> InstanceRow | Unjudgeable:
    """One row as an InstanceRow, or why it cannot be judged. The id comes as text
    whatever the column's type (a JSON number for an integer id on PostgreSQL)."""
    if _plain(fields, rules.max_clock_skew):
        instance_id, status, process, status_age, heartbeat_age = fields[:5]
        return InstanceRow(instance_id, True, status, status_age, heartbeat_age, process)
    (
        instance_id,
        status,
        process,
        status_age,
        heartbeat_age,
        raw_changed,
        raw_heartbeat,
        raw_enabled,
    ) = (*fields, None, None, None)[:8]  # five values when none of the raw three is set
    bad = _bad_value(instance_id, raw_enabled, status, process, mapping)
    if bad is not None:
        return bad
    name = str(instance_id)
    m = mapping
    if raw_changed is not None or status_age is None:
        why = "not a time" if raw_changed is not None else "NULL"
        return Unjudgeable(name, m.status_changed_at, cut(raw_changed), why, FIX_TIME)
    if raw_heartbeat is not None:
        return Unjudgeable(name, m.heartbeat, cut(raw_heartbeat), "not a time", FIX_TIME)
    try:
        changed = float(status_age)
        beat = None if heartbeat_age is None else float(heartbeat_age)
    except (TypeError, ValueError) as exc:  # whatever else a hand-made table holds
        return Unjudgeable(name, m.status_changed_at, None, f"unreadable: {exc}", FIX_TIME)
    for column, age in ((m.status_changed_at, changed), (m.heartbeat, beat)):
        if age is not None and -age > rules.max_clock_skew:
            why = f"{-age:.1f} s ahead of the database clock"
            return Unjudgeable(name, column, None, why, FIX_AHEAD)
    hosted = None if process is None else str(process)
    return InstanceRow(name, True, str(status), changed, beat, hosted)


def _plain(fields: Sequence[Any], skew: float) -> bool:
    """The common case, tested cheaply first: every value read, text where text is, no
    time ahead of the database clock by more than `skew`."""
    if len(fields) != 5:  # a raw value is set: something could not be read
        return False
    instance_id, status, process, status_age, heartbeat_age = fields
    return (
        type(instance_id) is str
        and bool(instance_id)
        and type(status) is str
        and (process is None or type(process) is str)
        and type(status_age) is float
        and (heartbeat_age is None or type(heartbeat_age) is float)
        and -status_age <= skew
        and (heartbeat_age is None or -heartbeat_age <= skew)
    )


def _bad_value(
    instance_id: Any, raw_enabled: Any, status: Any, process: Any, m: InstancesSettings
) -> Unjudgeable | None:
    """The row's `enabled`, status, id or process cannot be read (in that order: a row
    whose `enabled` and status read is one of the monitored)."""
    name = cut(instance_id)
    if raw_enabled is not None:
        why = "not a true or false"
        return Unjudgeable(name, m.enabled, cut(raw_enabled), why, FIX_ENABLED, monitored=False)
    if status is None or binary(status):
        why = "binary" if status is not None else "the status is NULL"
        return Unjudgeable(name, m.status, cut(status), why, FIX_STATUS, monitored=False)
    if binary(instance_id):
        return Unjudgeable(name, m.id, name, "binary", FIX_ID)
    if not name:
        why = "the id is NULL" if name is None else "the id is empty"
        return Unjudgeable(name, m.id, name, why, FIX_ID)
    if binary(process):
        return Unjudgeable(name, m.process, cut(process), "binary", FIX_PROCESS)
    return None


def binary(value: object) -> bool:
    """A BLOB as `ReadingSql.text` sends it: a one-element JSON array of its hex."""
    return isinstance(value, list)


def cut(raw: object) -> str | None:
    if raw is None:
        return None
    text = f"x'{raw[0]}'" if isinstance(raw, list) and raw else str(raw)
    return text if len(text) <= _RAW_CHARS else text[: _RAW_CHARS - 1] + "…"


def verdict(
    instance_id: str,
    enabled: Any,
    ignored: Any,
    raw: Mapping[str, str | None],
    fields: Sequence[Any],
    mapping: InstancesSettings,
    rules: DetectionRules,
) -> RowFacts:
    """The verdict on one row read now, with the rule and its numbers (`explain`)."""
    if enabled is not None and not enabled:
        return RowFacts(instance_id, Verdict.DISABLED, "enabled is false", raw)
    if enabled and ignored:
        return RowFacts(instance_id, Verdict.IGNORED, "its status is never recovered", raw)
    row = read(fields, mapping, rules)
    if isinstance(row, Unjudgeable):
        rule = f"{why_of(row)}; {row.fix}"
        return RowFacts(instance_id, Verdict.UNJUDGEABLE, rule, raw, unjudgeable=row)
    finding = classify(row, rules)
    if finding is not None:
        return RowFacts(instance_id, Verdict.UNHEALTHY, rule_of(finding), raw, finding=finding)
    if row.heartbeat_age is None:
        rule = (
            f"never beat; status age {row.status_age:.1f} s ≤ stale_after {rules.stale_after:g} s"
        )
    else:
        rule = f"heartbeat age {row.heartbeat_age:.1f} s ≤ stale_after {rules.stale_after:g} s"
    return RowFacts(instance_id, Verdict.HEALTHY, rule, raw)


def rule_of(finding: Finding) -> str:
    """The rule a finding broke, with its numbers: `heartbeat age 143.2 s > stale_after 90 s`."""
    age_name, limit_name = _AGES[finding.reason]
    return f"{age_name} {finding.age:.1f} s > {limit_name} {finding.threshold:g} s"


def why_of(bad: Unjudgeable) -> str:
    """Why a row cannot be judged, in a few words: `last_heartbeat_at: not a time`."""
    return f"{bad.column}: {bad.why}"


_AGES = {
    Reason.STALE_HEARTBEAT: ("heartbeat age", "stale_after"),
    Reason.NEVER_BEAT: ("never beat; status age", "stale_after"),
    Reason.STUCK_CONNECTING: ("connecting for", "connecting_after"),
}
