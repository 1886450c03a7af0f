"""Prometheus metrics of one daemon, on a registry of its own.

Every `Metrics` owns a private `CollectorRegistry` (never prometheus-client's global one),
so tests and several daemons in one process do not clash. The daemon feeds it: a report
after every good cycle, each audit row as the ledger commits it, breaker snapshots, the
brake, leadership and its own RSS; `/metrics` serves `render()`.

Metrics (all prefixed `watchdog_`):

* `instances{health="healthy"|"unhealthy"}` gauge: monitored instances at the last good
  cycle, split by the detection verdict.
* `incidents_open{state="open"|"exhausted"|"suppressed"}` gauge: incidents not closed.
* `actions_total{action,outcome}` counter: one per audit row, labelled with the row's
  `action` and `outcome` columns. A recovery attempt writes two rows (`started`, then
  `ok`/`failed`/`skipped`), so count attempts by `outcome="started"` and results by the
  others.
* `cycle_duration_seconds` histogram: wall time of each good cycle.
* `detection_delay_seconds` histogram: how long past its threshold an instance already
  was when it was detected (the `overdue` detail of a `detected` audit row).
* `breaker_state{backend}` gauge: 0 closed, 1 half-open, 2 open.
* `brake_engaged` gauge: 1 while the mass-failure brake holds.
* `leader` gauge: 1 while this node leads (acts); 0 on a standby.
* `last_good_cycle_timestamp_seconds` gauge: Unix time (database clock) of the last good
  cycle; 0 before the first one. Alert on `time() - watchdog_last_good_cycle_...`.
* `process_resident_memory_bytes` gauge: the daemon's RSS as last sampled by the daemon.

On Linux the standard `process_*` metrics (CPU, RSS, open fds, start time) come along
from prometheus-client's `ProcessCollector`; elsewhere it silently reports nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.process_collector import ProcessCollector

from watchdog.core.breaker import BreakerSnapshot, BreakerState
from watchdog.core.model import OPEN_STATES, Action, AuditAction, AuditRow, Outcome
from watchdog.engine.cycle import CYCLE_BUDGET
from watchdog.engine.report import CycleReport

# The text exposition format `render()` produces (prometheus-client's own constant for it
# only exists in newer releases).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

BREAKER_VALUES: Final[Mapping[BreakerState, int]] = {
    BreakerState.CLOSED: 0,
    BreakerState.HALF_OPEN: 1,
    BreakerState.OPEN: 2,
}

# Incident states that are not closed: each always has a sample, 0 when none.
OPEN_STATE_NAMES: Final = tuple(sorted(str(s) for s in OPEN_STATES))

CYCLE_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DETECTION_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0)

_PACED: Final = (str(Action.API_RESTART), str(Action.PROCESS_RESTART))  # rungs with a pace
# Label sets present from the start, so rate() sees the first increment of each.
_INITIAL_OUTCOMES: Final = (Outcome.STARTED, Outcome.OK, Outcome.FAILED, Outcome.SKIPPED)


class Metrics:
    """The daemon's metrics. Not thread-safe beyond what prometheus-client guarantees;
    the daemon calls it from its one event loop."""

    def __init__(self, *, process_collector: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._instances = Gauge(
            "watchdog_instances",
            "Monitored instances at the last good cycle, by detection verdict (unjudgeable: "
            "a value could not be read, so the row is neither acted on nor called healthy).",
            ["health"],
            registry=r,
        )
        self._incidents = Gauge(
            "watchdog_incidents_open",
            "Incidents not yet closed, by state.",
            ["state"],
            registry=r,
        )
        self._actions = Counter(
            "watchdog_actions",
            "Audit rows written, by action and outcome (a recovery attempt writes "
            "`started` and then its result).",
            ["action", "outcome"],
            registry=r,
        )
        self._cycle = Histogram(
            "watchdog_cycle_duration_seconds",
            "Wall time of each good detection and escalation cycle.",
            buckets=CYCLE_BUCKETS,
            registry=r,
        )
        self._detection = Histogram(
            "watchdog_detection_delay_seconds",
            "How long past its threshold an instance was when it was detected.",
            buckets=DETECTION_BUCKETS,
            registry=r,
        )
        self._breakers = Gauge(
            "watchdog_breaker_state",
            "Circuit breaker of each recovery backend: 0 closed, 1 half-open, 2 open.",
            ["backend"],
            registry=r,
        )
        self._brake = Gauge(
            "watchdog_brake_engaged",
            "1 while the mass-failure brake holds back db_flag and process_restart.",
            registry=r,
        )
        self._leader = Gauge(
            "watchdog_leader", "1 while this node is the leader that acts.", registry=r
        )
        self._last_good = Gauge(
            "watchdog_last_good_cycle_timestamp_seconds",
            "Unix time (database clock) of the last good cycle; 0 before the first.",
            registry=r,
        )
        self._queued = Gauge(
            "watchdog_actions_queued",
            "Claimed recovery calls waiting for their backend's pace ([api] rate, "
            "[process] rate), by action, at the last good cycle.",
            ["action"],
            registry=r,
        )
        self._backlog = Gauge(
            "watchdog_cycle_backlog",
            "Incidents to open and actions to start that the last good cycle left to the "
            f"cycles after it (a cycle does at most {CYCLE_BUDGET} of each; the next one "
            "follows at once).",
            registry=r,
        )
        self._rss = Gauge(
            "watchdog_process_resident_memory_bytes",
            "Resident set size of the watchdog process, as last sampled by the daemon.",
            registry=r,
        )
        if process_collector:
            ProcessCollector(registry=r)
        self._initialise()

    def _initialise(self) -> None:
        for health in ("healthy", "unhealthy", "unjudgeable"):
            self._instances.labels(health=health).set(0)
        for action in _PACED:
            self._queued.labels(action=action).set(0)
        for state in OPEN_STATE_NAMES:
            self._incidents.labels(state=state).set(0)
        for action in Action:
            for outcome in _INITIAL_OUTCOMES:
                self._actions.labels(action=str(action), outcome=str(outcome))

    # ------------------------------------------------------------------ feeding

    def observe_cycle(
        self,
        report: CycleReport,
        duration: float,
        monitored: int,
        open_by_state: Mapping[str, int],
    ) -> None:
        """After a good cycle: its duration, the fleet's health and the open incidents.

        `monitored` counts the instances the scan judged (enabled, status not ignored);
        `open_by_state` counts unclosed incidents by state (missing states are 0).
        """
        unhealthy = max(0, report.unhealthy)
        unjudgeable = len(report.unjudgeable)
        # Only those among the monitored come off the monitored count (a row whose
        # `enabled` or status cannot be read was never counted in it).
        among = sum(1 for u in report.unjudgeable if u.monitored)
        self._instances.labels(health="unhealthy").set(unhealthy)
        self._instances.labels(health="unjudgeable").set(unjudgeable)
        self._instances.labels(health="healthy").set(max(0, monitored - unhealthy - among))
        for state in {*OPEN_STATE_NAMES, *(str(s) for s in open_by_state)}:
            self._incidents.labels(state=state).set(open_by_state.get(state, 0))
        for action in _PACED:
            self._queued.labels(action=action).set(report.queued.get(action, 0))
        self._backlog.set(report.backlog)
        if math.isfinite(duration) and duration >= 0:
            self._cycle.observe(duration)
        self._last_good.set(report.now.timestamp())

    def observe_audit(self, row: AuditRow) -> None:
        """Count one committed audit row; a detection also records its delay.

        Never raises on odd content: it runs in the ledger's audit sink, after commit.
        """
        self._actions.labels(action=str(row.action), outcome=str(row.outcome)).inc()
        if row.action == AuditAction.DETECTED and row.outcome == Outcome.OK:
            overdue = _seconds(row.detail.get("overdue"))
            if overdue is not None:
                self._detection.observe(overdue)

    def set_breakers(self, snapshots: Iterable[BreakerSnapshot]) -> None:
        for snapshot in snapshots:
            value = BREAKER_VALUES.get(snapshot.state, 0)
            self._breakers.labels(backend=snapshot.name).set(value)

    def set_brake(self, engaged: bool) -> None:
        self._brake.set(1 if engaged else 0)

    def set_leader(self, leader: bool) -> None:
        self._leader.set(1 if leader else 0)

    def set_rss(self, rss_bytes: int) -> None:
        self._rss.set(max(0, rss_bytes))

    # ------------------------------------------------------------------ reading

    def render(self) -> bytes:
        """The text exposition format (version 0.0.4; see `CONTENT_TYPE`)."""
        return generate_latest(self.registry)


def _seconds(value: object) -> float | None:
    """A non-negative finite number of seconds, or None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    seconds = float(value)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
