"""Alert bodies from audit rows: which rows alert, the one-line summaries, and the JSON,
Slack and Alertmanager v2 payloads."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from watchdog.alerts import formats
from watchdog.alerts.sender import backoff, scrub
from watchdog.config import SinkSettings
from watchdog.core.model import AuditAction, AuditRow, Outcome

T0 = datetime(2024, 5, 1, 12, 0, 30, tzinfo=UTC)


def action(name: str) -> AuditAction:
    """An audit action, also one this version of the model may not list yet."""
    try:
        return AuditAction(name)
    except ValueError:
        return cast(AuditAction, name)


def row(
    name: str,
    outcome: Outcome = Outcome.OK,
    instance: str = "wa-05",
    attempt: int | None = 6,
    reason: str | None = "stuck_connecting",
    **detail: Any,
) -> AuditRow:
    return AuditRow(
        id=41,
        at=T0,
        instance_id=instance,
        action=action(name),
        outcome=outcome,
        incident_id=7,
        reason=reason,
        attempt=attempt,
        detail=detail,
    )


RESTART = row("process_restart", Outcome.STARTED, target="app")
EXHAUSTED = row("exhausted", attempt=10, attempts=10)
SUPPRESSED = row(
    "suppressed", Outcome.SKIPPED, attempt=7, process="app", until="2024-05-01T12:30:00+00:00"
)
BRAKE_ON = row("brake_engaged", instance="*", attempt=None, reason=None, unhealthy=9, monitored=10)
BRAKE_OFF = row(
    "brake_released", instance="*", attempt=None, reason=None, unhealthy=1, monitored=10
)
BREAKER_OPEN = row(
    "breaker_opened",
    instance="*",
    attempt=None,
    reason=None,
    backend="api",
    failures=5,
    last_error="HTTP 503 from POST http://app/api",
)
BREAKER_CLOSED = row("breaker_closed", instance="*", attempt=None, reason=None, backend="api")
LEADER = row("leader_changed", instance="*", attempt=None, reason=None, node="b:2", host="b", pid=2)


# ------------------------------------------------------------------------ alert-worthy


@pytest.mark.parametrize(
    "audit",
    [RESTART, EXHAUSTED, SUPPRESSED, BRAKE_ON, BRAKE_OFF, BREAKER_OPEN, BREAKER_CLOSED, LEADER],
)
def test_alert_worthy_rows(audit: AuditRow) -> None:
    assert formats.alert_worthy(audit)


@pytest.mark.parametrize(
    "audit",
    [
        row("process_restart", Outcome.OK),  # the outcome of a restart already alerted
        row("process_restart", Outcome.FAILED),
        row("process_restart", Outcome.INTERRUPTED),
        row("api_restart", Outcome.STARTED),
        row("db_flag", Outcome.STARTED),
        row("detected"),
        row("recovered"),
        row("paused"),
        row("flapping"),
        row("exhausted", Outcome.SKIPPED, dry_run=True),  # a dry run changes nothing
        row("process_restart", Outcome.STARTED, dry_run=True),
        row("leader_changed", instance="*", node="a:1", first=True),  # a lone daemon's start
        row("something_new"),
    ],
)
def test_rows_that_do_not_alert(audit: AuditRow) -> None:
    assert not formats.alert_worthy(audit)


def test_alert_actions_cover_the_model_and_leadership() -> None:
    known = {str(a) for a in AuditAction}
    assert {str(a) for a in formats.ALERT_ACTIONS} - known <= {"leader_changed"}
    assert "leader_changed" in formats.ALERT_ACTIONS


# --------------------------------------------------------------------------- summaries


@pytest.mark.parametrize(
    ("audit", "expected"),
    [
        (
            row("process_restart", Outcome.STARTED),
            "wa-05: process_restart (attempt 6) after stuck_connecting",
        ),
        (RESTART, "wa-05: process_restart of app (attempt 6) after stuck_connecting"),
        (
            EXHAUSTED,
            "wa-05: recovery exhausted after 10 attempts (stuck_connecting); "
            "waiting for recovery or an operator's reset",
        ),
        (
            SUPPRESSED,
            "wa-05: process_restart of app suppressed (attempt 7): restart budget spent "
            "until 2024-05-01T12:30:00+00:00",
        ),
        (
            BRAKE_ON,
            "fleet: brake engaged (9 of 10 unhealthy); "
            "no db_flag or process_restart until it is released",
        ),
        (BRAKE_OFF, "fleet: brake released (1 of 10 unhealthy)"),
        (
            BREAKER_OPEN,
            "fleet: api breaker opened after 5 failures: HTTP 503 from POST http://app/api",
        ),
        (BREAKER_CLOSED, "fleet: api breaker closed"),
        (LEADER, "watchdog leader is now b:2 (b pid 2)"),
        (row("recovered"), "wa-05: recovered ok"),
    ],
)
def test_summaries(audit: AuditRow, expected: str) -> None:
    assert formats.summary(audit) == expected


def test_a_summary_is_one_bounded_line() -> None:
    audit = row("breaker_opened", instance="*", backend="api", last_error="a\nb\r\n" + "x" * 999)
    text = formats.summary(audit)
    assert "\n" not in text
    assert "\r" not in text
    assert len(text) <= 300
    assert text.endswith("…")


def test_a_leader_change_without_detail_names_the_actor() -> None:
    audit = row("leader_changed", instance="*", attempt=None, reason=None)
    assert formats.summary(audit) == "watchdog leader is now watchdog"


# ---------------------------------------------------------------------------- payloads


def test_json_payload() -> None:
    assert formats.payload("json", RESTART) == {
        "event": "process_restart",
        "instance": "wa-05",
        "attempt": 6,
        "reason": "stuck_connecting",
        "detail": {"target": "app"},
        "at": "2024-05-01T12:00:30+00:00",
        "summary": "wa-05: process_restart of app (attempt 6) after stuck_connecting",
        "audit_id": 41,
    }


def test_slack_payload_is_the_summary() -> None:
    assert formats.payload("slack", EXHAUSTED) == {"text": formats.summary(EXHAUSTED)}


def test_a_hostile_instance_id_is_text_in_slack_not_a_mention_or_a_link() -> None:
    hostile = row("exhausted", instance="<!channel> & <https://evil.example|click>")
    text = formats.payload("slack", hostile)["text"]
    assert text.startswith("&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;: ")
    assert "<" not in text
    assert ">" not in text


def test_alertmanager_payload_raises_an_alert() -> None:
    assert formats.payload("alertmanager", RESTART) == [
        {
            "labels": {
                "alertname": "WatchdogProcessRestart",
                "instance": "wa-05",
                "severity": "warning",
            },
            "annotations": {
                "summary": "wa-05: process_restart of app (attempt 6) after stuck_connecting",
                "description": "event=process_restart; outcome=started; incident=7; "
                "reason=stuck_connecting; attempt=6; audit_id=41; target=app",
            },
            "startsAt": "2024-05-01T12:00:30+00:00",
        }
    ]


@pytest.mark.parametrize(
    ("name", "severity"),
    [
        ("exhausted", "critical"),
        ("suppressed", "warning"),
        ("brake_engaged", "critical"),
        ("breaker_opened", "warning"),
        ("leader_changed", "warning"),
    ],
)
def test_alertmanager_severities(name: str, severity: str) -> None:
    [alert] = formats.alertmanager_payload(row(name))
    assert alert["labels"]["severity"] == severity
    assert alert["labels"]["alertname"].startswith("Watchdog")
    assert "endsAt" not in alert


@pytest.mark.parametrize(
    ("raised", "resolved"), [(BRAKE_ON, BRAKE_OFF), (BREAKER_OPEN, BREAKER_CLOSED)]
)
def test_alertmanager_resolve_ends_the_alert_it_raised(
    raised: AuditRow, resolved: AuditRow
) -> None:
    [opened] = formats.alertmanager_payload(raised)
    [closed] = formats.alertmanager_payload(resolved)
    # Same labels: Alertmanager matches the two by fingerprint.
    assert closed["labels"] == opened["labels"]
    assert closed["endsAt"] == "2024-05-01T12:00:30+00:00"
    assert "startsAt" not in closed
    assert "endsAt" not in opened


def test_breaker_alerts_are_told_apart_by_backend() -> None:
    [api] = formats.alertmanager_payload(BREAKER_OPEN)
    [supervisor] = formats.alertmanager_payload(
        row("breaker_opened", instance="*", backend="supervisor")
    )
    assert api["labels"]["backend"] == "api"
    assert supervisor["labels"]["backend"] == "supervisor"


def test_target_url() -> None:
    assert formats.target_url("alertmanager", "http://am:9093/") == "http://am:9093/api/v2/alerts"
    assert formats.target_url("alertmanager", "http://am:9093") == "http://am:9093/api/v2/alerts"
    assert formats.target_url("slack", "https://hooks/x/y") == "https://hooks/x/y"
    assert formats.target_url("json", "http://h/p?q=1") == "http://h/p?q=1"


def test_encode_is_json_text_of_the_payload() -> None:
    for kind in formats.SINK_KINDS:
        assert json.loads(formats.encode(kind, LEADER)) == formats.payload(kind, LEADER)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown sink kind 'pager'"):
        formats.payload("pager", RESTART)


# ------------------------------------------------------------------ sender arithmetic


def test_backoff_doubles_from_two_seconds_up_to_five_minutes() -> None:
    assert [backoff(n) for n in range(1, 11)] == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert backoff(0) == 2


def test_scrub_removes_webhook_paths_queries_and_tokens() -> None:
    hook = SinkSettings(
        name="slack", kind="slack", url="https://hooks.example/services/T01/B02/abcdEFGH1234?k=q1w2"
    )
    text = (
        "ConnectError for https://hooks.example/services/T01/B02/abcdEFGH1234?k=q1w2\n"
        "path services/T01/B02/abcdEFGH1234, segment abcdEFGH1234, query k=q1w2, "
        "token tok-123456 and http://elsewhere:8080/secret/path"
    )
    cleaned = scrub(text, hook, "tok-123456")
    assert cleaned == (
        "ConnectError for https://hooks.example/*** path ***, segment ***, query ***, "
        "token *** and http://elsewhere:8080/***"
    )
    assert len(scrub("x" * 1000, hook, None)) == 300


def test_the_unjudgeable_alert_names_the_count_the_columns_and_some_rows() -> None:
    raised = row(
        "unjudgeable",
        instance="*",
        attempt=None,
        reason=None,
        count=3,
        columns={"last_heartbeat_at": 2, "id": 1},
        sample=["a", None, "c"],
    )
    assert formats.alert_worthy(raised)
    assert formats.summary(raised).startswith(
        "fleet: 3 row(s) cannot be judged (last_heartbeat_at ×2, id ×1), e.g. a, None, c"
    )
    cleared = row("unjudgeable_cleared", instance="*", attempt=None, reason=None)
    (alert,) = formats.alertmanager_payload(cleared)
    assert alert["labels"]["alertname"] == "WatchdogUnjudgeableRows"
    assert "endsAt" in alert
