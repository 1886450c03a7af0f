"""Metrics: fed like the daemon feeds them, read back through the Prometheus text parser."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from watchdog.core.breaker import BreakerSnapshot, BreakerState
from watchdog.core.model import AuditAction, AuditRow, Outcome, Unjudgeable
from watchdog.daemon.metrics import CONTENT_TYPE, DETECTION_BUCKETS, Metrics
from watchdog.engine.report import CycleReport

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the rendered text, by name and label set."""
    text = metrics.render().decode("utf-8")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, frozenset(labels.items()))]


def families(metrics: Metrics) -> dict[str, str]:
    text = metrics.render().decode("utf-8")
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def audit(
    action: AuditAction,
    outcome: Outcome = Outcome.OK,
    detail: Mapping[str, Any] | None = None,
    instance: str = "i-1",
) -> AuditRow:
    return AuditRow(1, T0, instance, action, outcome, detail=detail or {})


def report(unhealthy: int, at: datetime = T0) -> CycleReport:
    return CycleReport(now=at, unhealthy=unhealthy)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def test_every_metric_is_exposed_with_its_type(metrics: Metrics) -> None:
    expected = {
        "watchdog_instances": "gauge",
        "watchdog_incidents_open": "gauge",
        "watchdog_actions": "counter",
        "watchdog_cycle_duration_seconds": "histogram",
        "watchdog_detection_delay_seconds": "histogram",
        "watchdog_breaker_state": "gauge",
        "watchdog_brake_engaged": "gauge",
        "watchdog_leader": "gauge",
        "watchdog_last_good_cycle_timestamp_seconds": "gauge",
        "watchdog_process_resident_memory_bytes": "gauge",
        "watchdog_cycle_backlog": "gauge",
    }
    assert families(metrics).items() >= expected.items()
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_a_fresh_registry_starts_at_zero(metrics: Metrics) -> None:
    assert value(metrics, "watchdog_instances", health="healthy") == 0
    assert value(metrics, "watchdog_instances", health="unhealthy") == 0
    for state in ("open", "exhausted", "suppressed"):
        assert value(metrics, "watchdog_incidents_open", state=state) == 0
    # Known label sets exist before their first increment, so rate() sees it.
    for action in ("api_restart", "db_flag", "process_restart"):
        for outcome in ("started", "ok", "failed", "skipped"):
            assert value(metrics, "watchdog_actions_total", action=action, outcome=outcome) == 0
    assert value(metrics, "watchdog_cycle_duration_seconds_count") == 0
    assert value(metrics, "watchdog_last_good_cycle_timestamp_seconds") == 0
    assert value(metrics, "watchdog_leader") == 0


def test_metrics_objects_do_not_share_a_registry() -> None:
    first, second = Metrics(), Metrics()  # the same names twice: no "Duplicated timeseries"
    first.observe_audit(audit(AuditAction.API_RESTART, Outcome.FAILED))
    assert value(first, "watchdog_actions_total", action="api_restart", outcome="failed") == 1
    assert value(second, "watchdog_actions_total", action="api_restart", outcome="failed") == 0
    assert first.registry is not second.registry


def test_a_cycle_sets_instances_incidents_duration_and_last_good(metrics: Metrics) -> None:
    metrics.observe_cycle(report(3), 0.02, 10, {"open": 2, "exhausted": 1})

    assert value(metrics, "watchdog_instances", health="healthy") == 7
    assert value(metrics, "watchdog_instances", health="unhealthy") == 3
    assert value(metrics, "watchdog_incidents_open", state="open") == 2
    assert value(metrics, "watchdog_incidents_open", state="exhausted") == 1
    assert value(metrics, "watchdog_incidents_open", state="suppressed") == 0
    assert value(metrics, "watchdog_cycle_duration_seconds_count") == 1
    assert value(metrics, "watchdog_cycle_duration_seconds_sum") == pytest.approx(0.02)
    assert value(metrics, "watchdog_cycle_duration_seconds_bucket", le="0.01") == 0
    assert value(metrics, "watchdog_cycle_duration_seconds_bucket", le="0.025") == 1
    assert value(metrics, "watchdog_cycle_duration_seconds_bucket", le="+Inf") == 1
    assert value(metrics, "watchdog_last_good_cycle_timestamp_seconds") == T0.timestamp()


def test_the_next_cycle_replaces_the_gauges_and_adds_to_the_histogram(metrics: Metrics) -> None:
    metrics.observe_cycle(report(3), 0.02, 10, {"open": 2, "exhausted": 1})
    later = T0 + timedelta(seconds=5)
    metrics.observe_cycle(report(0, later), 3.0, 12, {"suppressed": 1})

    assert value(metrics, "watchdog_instances", health="healthy") == 12
    assert value(metrics, "watchdog_instances", health="unhealthy") == 0
    assert value(metrics, "watchdog_incidents_open", state="open") == 0  # gone from the map
    assert value(metrics, "watchdog_incidents_open", state="exhausted") == 0
    assert value(metrics, "watchdog_incidents_open", state="suppressed") == 1
    assert value(metrics, "watchdog_cycle_duration_seconds_count") == 2
    assert value(metrics, "watchdog_cycle_duration_seconds_bucket", le="2.5") == 1
    assert value(metrics, "watchdog_cycle_duration_seconds_bucket", le="5.0") == 2
    assert value(metrics, "watchdog_last_good_cycle_timestamp_seconds") == later.timestamp()


def test_the_backlog_a_cycle_left_is_a_gauge(metrics: Metrics) -> None:
    metrics.observe_cycle(replace(report(3), backlog=9_500), 0.2, 10, {})
    assert value(metrics, "watchdog_cycle_backlog") == 9_500
    metrics.observe_cycle(report(3), 0.2, 10, {})
    assert value(metrics, "watchdog_cycle_backlog") == 0


def test_unjudgeable_rows_come_off_healthy_only_if_they_were_counted_monitored(
    metrics: Metrics,
) -> None:
    bad = (
        Unjudgeable("a", "last_heartbeat_at", "soon", "not a time", "fix"),  # monitored
        Unjudgeable("b", "enabled", "maybe", "not a true or false", "fix", monitored=False),
    )
    metrics.observe_cycle(replace(report(2), unjudgeable=bad), 0.01, 10, {})
    assert value(metrics, "watchdog_instances", health="unjudgeable") == 2
    assert value(metrics, "watchdog_instances", health="healthy") == 10 - 2 - 1


def test_healthy_is_never_negative(metrics: Metrics) -> None:
    metrics.observe_cycle(report(4), 0.01, 2, {})  # a count from another moment of the fleet
    assert value(metrics, "watchdog_instances", health="healthy") == 0
    assert value(metrics, "watchdog_instances", health="unhealthy") == 4


def test_audit_rows_count_by_action_and_outcome(metrics: Metrics) -> None:
    rows = [
        audit(AuditAction.API_RESTART, Outcome.STARTED),
        audit(AuditAction.API_RESTART, Outcome.OK),
        audit(AuditAction.API_RESTART, Outcome.STARTED),
        audit(AuditAction.API_RESTART, Outcome.FAILED),
        audit(AuditAction.PROCESS_RESTART, Outcome.SKIPPED, {"reason": "circuit_open"}),
        audit(AuditAction.BREAKER_OPENED, Outcome.OK, {"backend": "api"}, instance="*"),
        audit(AuditAction.RECOVERED, Outcome.OK),
    ]
    for row in rows:
        metrics.observe_audit(row)

    def count(action: str, outcome: str) -> float:
        return value(metrics, "watchdog_actions_total", action=action, outcome=outcome)

    assert count("api_restart", "started") == 2
    assert count("api_restart", "ok") == 1
    assert count("api_restart", "failed") == 1
    assert count("db_flag", "ok") == 0
    assert count("process_restart", "skipped") == 1
    assert count("breaker_opened", "ok") == 1
    assert count("recovered", "ok") == 1


def test_detections_record_how_overdue_the_instance_was(metrics: Metrics) -> None:
    for overdue in (0.0, 0.07, 4.2, 45.0, 600.0):
        detail = {"status": "CONNECTED", "age": 90 + overdue, "threshold": 90.0, "overdue": overdue}
        metrics.observe_audit(audit(AuditAction.DETECTED, Outcome.OK, detail))

    assert value(metrics, "watchdog_actions_total", action="detected", outcome="ok") == 5
    assert value(metrics, "watchdog_detection_delay_seconds_count") == 5
    assert value(metrics, "watchdog_detection_delay_seconds_sum") == pytest.approx(649.27)
    assert value(metrics, "watchdog_detection_delay_seconds_bucket", le="0.05") == 1
    assert value(metrics, "watchdog_detection_delay_seconds_bucket", le="0.1") == 2
    assert value(metrics, "watchdog_detection_delay_seconds_bucket", le="5.0") == 3
    assert value(metrics, "watchdog_detection_delay_seconds_bucket", le="60.0") == 4
    assert value(metrics, "watchdog_detection_delay_seconds_bucket", le="+Inf") == 5
    bounds = sorted(
        float(dict(labels)["le"])
        for name, labels in samples(metrics)
        if name == "watchdog_detection_delay_seconds_bucket"
    )
    assert bounds == [*DETECTION_BUCKETS, math.inf]
    assert (DETECTION_BUCKETS[0], DETECTION_BUCKETS[-1]) == (0.05, 60.0)


@pytest.mark.parametrize(
    "detail",
    [
        {},  # a dry run's detected row has no overdue
        {"overdue": "12"},
        {"overdue": None},
        {"overdue": True},
        {"overdue": float("nan")},
        {"overdue": float("inf")},
        {"overdue": -1.0},
    ],
)
def test_a_detection_without_a_usable_delay_is_only_counted(
    metrics: Metrics, detail: dict[str, Any]
) -> None:
    metrics.observe_audit(audit(AuditAction.DETECTED, Outcome.OK, detail))
    assert value(metrics, "watchdog_actions_total", action="detected", outcome="ok") == 1
    assert value(metrics, "watchdog_detection_delay_seconds_count") == 0


def test_a_dry_run_detection_is_not_a_delay_sample(metrics: Metrics) -> None:
    metrics.observe_audit(audit(AuditAction.DETECTED, Outcome.SKIPPED, {"overdue": 3.0}))
    assert value(metrics, "watchdog_actions_total", action="detected", outcome="skipped") == 1
    assert value(metrics, "watchdog_detection_delay_seconds_count") == 0


def test_breaker_states_map_to_0_1_2(metrics: Metrics) -> None:
    metrics.set_breakers(
        [
            BreakerSnapshot("api", BreakerState.CLOSED),
            BreakerSnapshot("db_flag", BreakerState.HALF_OPEN),
            BreakerSnapshot("supervisor", BreakerState.OPEN),
        ]
    )
    assert value(metrics, "watchdog_breaker_state", backend="api") == 0
    assert value(metrics, "watchdog_breaker_state", backend="db_flag") == 1
    assert value(metrics, "watchdog_breaker_state", backend="supervisor") == 2

    metrics.set_breakers([BreakerSnapshot("supervisor", BreakerState.HALF_OPEN)])
    assert value(metrics, "watchdog_breaker_state", backend="supervisor") == 1
    assert value(metrics, "watchdog_breaker_state", backend="api") == 0  # unchanged


def test_brake_leader_and_rss(metrics: Metrics) -> None:
    metrics.set_brake(True)
    metrics.set_leader(True)
    metrics.set_rss(123_456_789)
    assert value(metrics, "watchdog_brake_engaged") == 1
    assert value(metrics, "watchdog_leader") == 1
    assert value(metrics, "watchdog_process_resident_memory_bytes") == 123_456_789

    metrics.set_brake(False)
    metrics.set_leader(False)
    assert value(metrics, "watchdog_brake_engaged") == 0
    assert value(metrics, "watchdog_leader") == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_process_collector_reports_this_process(metrics: Metrics) -> None:
    assert value(metrics, "process_resident_memory_bytes") > 0
    assert value(metrics, "process_open_fds") > 0
    assert "process_resident_memory_bytes" not in families(Metrics(process_collector=False))
