"""The pure policy: `classify` (detection) and `decide` (escalation over a `World`).

Example tests pin each spec rule down at its boundaries; the property tests drive a small
in-memory simulator of the engine through random runs (health, pauses, resets, busy
instances, uneven clock steps) and check the spec's invariants on every cycle.
Ladder and backoff arithmetic have their own module, test_backoff.py.
"""

from __future__ import annotations

import enum
import itertools
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import hypothesis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watchdog.core.model import Action, Finding, Incident, IncidentState, Pause, Reason
from watchdog.core.policy import (
    UNREADABLE,
    Act,
    Decision,
    DetectionRules,
    Dismiss,
    EscalationRules,
    Exhaust,
    InstanceRow,
    Open,
    Resolve,
    World,
    classify,
    decide,
    unmonitored_reason,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
RULES = EscalationRules()
DETECTION = DetectionRules()
MAX = RULES.max_attempts


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def spec_action(attempt: int) -> Action:
    """The spec's ladder, written out independently of `EscalationRules.ladder`."""
    assert 1 <= attempt <= MAX
    if attempt <= 2:
        return Action.API_RESTART
    if attempt <= 5:
        return Action.DB_FLAG
    return Action.PROCESS_RESTART


def spec_backoff(attempt: int, jitter: float) -> float:
    settle = 120.0 if spec_action(attempt) is Action.PROCESS_RESTART else 30.0
    return min(settle * 1.5 ** (attempt - 1), max(300.0, settle)) * (1 + 0.2 * jitter)


# ========================================================================= detection


def row(
    *,
    enabled: bool = True,
    status: str = "ONLINE",
    status_age: float = 10.0,
    heartbeat_age: float | None = 5.0,
    process: str | None = "worker-1",
) -> InstanceRow:
    return InstanceRow("inst", enabled, status, status_age, heartbeat_age, process)


def reason_of(instance: InstanceRow) -> Reason | None:
    found = classify(instance, DETECTION)
    return None if found is None else found.reason


@pytest.mark.parametrize(
    ("instance", "expected"),
    [
        pytest.param(row(), None, id="fresh"),
        pytest.param(row(heartbeat_age=90.0), None, id="heartbeat-at-threshold"),
        pytest.param(row(heartbeat_age=90.001), Reason.STALE_HEARTBEAT, id="heartbeat-stale"),
        pytest.param(row(heartbeat_age=None, status_age=90.0), None, id="never-beat-at-threshold"),
        pytest.param(row(heartbeat_age=None, status_age=90.5), Reason.NEVER_BEAT, id="never-beat"),
        pytest.param(
            row(status="CONNECTING", status_age=120.0), None, id="connecting-at-threshold"
        ),
        pytest.param(
            row(status="CONNECTING", status_age=120.5), Reason.STUCK_CONNECTING, id="connecting"
        ),
        pytest.param(row(status="ONLINE", status_age=5000.0), None, id="old-status-not-connecting"),
    ],
)
def test_classify_applies_thresholds_strictly(
    instance: InstanceRow, expected: Reason | None
) -> None:
    assert reason_of(instance) is expected


@pytest.mark.parametrize("status", sorted(DETECTION.connecting_statuses))
def test_every_connecting_status_can_be_stuck(status: str) -> None:
    assert reason_of(row(status=status, status_age=121.0)) is Reason.STUCK_CONNECTING


def test_finding_records_age_threshold_status_and_process() -> None:
    found = classify(row(status="LOADING", heartbeat_age=150.0, process="p7"), DETECTION)

    assert found == Finding("inst", Reason.STALE_HEARTBEAT, "LOADING", 150.0, 90.0, "p7")
    assert found.overdue == pytest.approx(60.0)


def test_stuck_connecting_is_measured_against_connecting_after() -> None:
    found = classify(row(status="RECONNECTING", status_age=200.0), DETECTION)

    assert found is not None
    assert (found.age, found.threshold) == (200.0, 120.0)


@pytest.mark.parametrize("heartbeat_age", [None, 10_000.0])
@pytest.mark.parametrize("status", ["ONLINE", "CONNECTING", *sorted(DETECTION.ignored_statuses)])
def test_disabled_instances_are_never_findings(status: str, heartbeat_age: float | None) -> None:
    instance = row(enabled=False, status=status, status_age=10_000.0, heartbeat_age=heartbeat_age)

    assert classify(instance, DETECTION) is None


@pytest.mark.parametrize("heartbeat_age", [None, 10_000.0])
@pytest.mark.parametrize("status", sorted(DETECTION.ignored_statuses))
def test_ignored_statuses_are_never_findings(status: str, heartbeat_age: float | None) -> None:
    instance = row(status=status, status_age=10_000.0, heartbeat_age=heartbeat_age)

    assert classify(instance, DETECTION) is None


# ======================================================================== decide: examples


def finding(instance_id: str = "a", reason: Reason = Reason.STALE_HEARTBEAT) -> Finding:
    return Finding(instance_id, reason, "ONLINE", 120.0, 90.0, "worker-1")


def incident(
    instance_id: str = "a",
    *,
    incident_id: int = 1,
    attempt: int = 0,
    state: IncidentState = IncidentState.OPEN,
    next_action_at: datetime | None = None,
    closed_at: datetime | None = None,
) -> Incident:
    return Incident(
        id=incident_id,
        instance_id=instance_id,
        reason=Reason.STALE_HEARTBEAT,
        state=state,
        attempt=attempt,
        opened_at=T0 - timedelta(hours=1),
        next_action_at=next_action_at,
        closed_at=closed_at,
    )


def pause(instance_id: str = "a", until: datetime | None = None) -> Pause:
    return Pause(instance_id, until or at(60), "maintenance", "operator")


def world(
    *,
    now: datetime = T0,
    findings: Iterable[Finding] = (),
    incidents: Iterable[Incident] = (),
    recent: Iterable[Incident] = (),
    pauses: Iterable[Pause] = (),
    busy: Iterable[str] = (),
    unjudged: Iterable[str] = (),
    unmonitored: Mapping[str, str] | None = None,
) -> World:
    return World(
        now=now,
        findings={f.instance_id: f for f in findings},
        incidents={i.instance_id: i for i in incidents},
        recent={i.instance_id: i for i in recent},
        pauses={p.instance_id: p for p in pauses},
        busy=frozenset(busy),
        unjudged=frozenset(unjudged),
        unmonitored=unmonitored or {},
    )


def run(w: World, jitter: float = 0.0) -> list[Decision]:
    return decide(RULES, w, lambda: jitter)


def act(attempt: int, instance_id: str = "a", jitter: float = 0.0) -> Act:
    return Act(
        instance_id,
        attempt,
        spec_action(attempt),
        spec_backoff(attempt, jitter),
        finding(instance_id),
    )


def test_new_finding_opens_an_incident_and_takes_the_first_step() -> None:
    assert run(world(findings=[finding()])) == [Open(finding(), 0, None), act(1)]


def test_act_delay_uses_the_jitter_drawn_by_the_caller() -> None:
    decisions = run(world(findings=[finding()]), jitter=0.5)

    assert decisions[-1] == act(1, jitter=0.5)
    assert isinstance(decisions[-1], Act)
    assert decisions[-1].delay == pytest.approx(33.0)


@pytest.mark.parametrize("attempt", range(MAX))
def test_due_open_incident_takes_the_next_attempt(attempt: int) -> None:
    w = world(findings=[finding()], incidents=[incident(attempt=attempt, next_action_at=T0)])

    assert run(w) == [act(attempt + 1)]


def test_settling_incident_waits_until_next_action_at() -> None:
    settling = incident(attempt=2, next_action_at=at(1))

    assert run(world(findings=[finding()], incidents=[settling])) == []
    assert run(world(now=at(1), findings=[finding()], incidents=[settling])) == [act(3)]


def test_incident_at_max_attempts_is_exhausted_not_acted_on() -> None:
    w = world(findings=[finding()], incidents=[incident(attempt=MAX, next_action_at=T0)])

    assert run(w) == [Exhaust("a", MAX)]


def test_last_attempt_is_given_its_settle_time_before_exhausting() -> None:
    w = world(findings=[finding()], incidents=[incident(attempt=MAX, next_action_at=at(1))])

    assert run(w) == []


def test_exhausted_incident_gets_no_more_decisions_while_unhealthy() -> None:
    w = world(
        findings=[finding()], incidents=[incident(attempt=MAX, state=IncidentState.EXHAUSTED)]
    )

    assert run(w) == []


@pytest.mark.parametrize("state", [IncidentState.OPEN, IncidentState.EXHAUSTED])
def test_healthy_instance_with_an_incident_is_resolved(state: IncidentState) -> None:
    existing = incident(attempt=4, state=state, next_action_at=at(100))

    assert run(world(incidents=[existing])) == [Resolve(existing)]


@pytest.mark.parametrize("why", ["disabled", "status LOGOUT", "deleted"])
def test_instance_that_left_our_care_is_dismissed_not_resolved(why: str) -> None:
    existing = incident(attempt=4)

    assert run(world(incidents=[existing], unmonitored={"a": why})) == [Dismiss(existing, why)]


def test_unmonitored_entry_of_another_instance_does_not_dismiss_this_one() -> None:
    existing = incident(attempt=4)

    assert run(world(incidents=[existing], unmonitored={"b": "disabled"})) == [Resolve(existing)]


@pytest.mark.parametrize(
    ("enabled", "status", "why"),
    [
        (None, None, "deleted"),
        (False, "ONLINE", "disabled"),
        (False, "LOGOUT", "disabled"),
        (True, "LOGOUT", "status LOGOUT"),
        (True, "BANNED", "status BANNED"),
        (True, "ONLINE", None),
        (True, "CONNECTING", None),
    ],
)
def test_unmonitored_reason_names_why_an_instance_is_not_ours(
    enabled: bool | None, status: str | None, why: str | None
) -> None:
    assert unmonitored_reason(enabled, status, DETECTION) == why


def test_resolves_come_first_then_instances_in_id_order() -> None:
    w = world(
        findings=[finding("c"), finding("b")],
        incidents=[incident("z", incident_id=9), incident("c", incident_id=3, attempt=1)],
    )

    assert run(w) == [
        Resolve(incident("z", incident_id=9)),
        Open(finding("b"), 0, None),
        act(1, "b"),
        act(2, "c"),
    ]


def test_paused_new_finding_is_opened_but_not_acted_on() -> None:
    assert run(world(findings=[finding()], pauses=[pause(until=at(1))])) == [
        Open(finding(), 0, None)
    ]


def test_paused_open_incident_is_not_acted_on_or_exhausted() -> None:
    for attempt in (3, MAX):
        w = world(findings=[finding()], incidents=[incident(attempt=attempt)], pauses=[pause()])
        assert run(w) == []


def test_pause_ends_at_its_until_time() -> None:
    w = world(findings=[finding()], incidents=[incident(attempt=1)], pauses=[pause(until=T0)])

    assert run(w) == [act(2)]


def test_pause_of_another_instance_does_not_hold_this_one() -> None:
    w = world(findings=[finding()], incidents=[incident(attempt=1)], pauses=[pause("b")])

    assert run(w) == [act(2)]


def test_busy_instance_gets_no_decision_at_all() -> None:
    unhealthy = world(findings=[finding()], busy=["a"])
    due = world(findings=[finding()], incidents=[incident(attempt=1)], busy=["a"])
    healed = world(incidents=[incident(attempt=1)], busy=["a"])
    gone = world(incidents=[incident(attempt=1)], busy=["a"], unmonitored={"a": "disabled"})

    assert run(unhealthy) == run(due) == run(healed) == run(gone) == []


def test_an_open_incident_whose_row_cannot_be_read_is_not_called_recovered() -> None:
    unreadable = world(incidents=[incident(attempt=1)], unjudged=["a"])
    left_the_scan = world(incidents=[incident(attempt=1)], unmonitored={"a": UNREADABLE})
    readable_again = world(incidents=[incident(attempt=1)])

    assert run(unreadable) == run(left_the_scan) == []
    assert [type(d) for d in run(readable_again)] == [Resolve]


def recovered(*, attempt: int, closed_ago: float) -> Incident:
    closed_at = T0 - timedelta(seconds=closed_ago)
    return incident(
        attempt=attempt, incident_id=7, state=IncidentState.RECOVERED, closed_at=closed_at
    )


@pytest.mark.parametrize("closed_ago", [0.0, 1.0, 599.0, 600.0])
def test_reopening_within_the_window_continues_the_attempt_count(closed_ago: float) -> None:
    w = world(findings=[finding()], recent=[recovered(attempt=3, closed_ago=closed_ago)])

    assert run(w) == [Open(finding(), 3, 7), act(4)]


@pytest.mark.parametrize("closed_ago", [600.001, 601.0, 86_400.0])
def test_reopening_after_the_window_starts_over(closed_ago: float) -> None:
    w = world(findings=[finding()], recent=[recovered(attempt=3, closed_ago=closed_ago)])

    assert run(w) == [Open(finding(), 0, None), act(1)]


def test_reopening_after_an_operator_reset_starts_over() -> None:
    reset = replace(recovered(attempt=8, closed_ago=5.0), state=IncidentState.RESET)

    assert run(world(findings=[finding()], recent=[reset])) == [Open(finding(), 0, None), act(1)]


def test_reopening_after_a_dismissal_starts_over() -> None:
    dismissed = replace(recovered(attempt=8, closed_ago=5.0), state=IncidentState.DISMISSED)

    assert run(world(findings=[finding()], recent=[dismissed])) == [
        Open(finding(), 0, None),
        act(1),
    ]


def test_reopening_an_exhausted_predecessor_exhausts_at_once() -> None:
    w = world(findings=[finding()], recent=[recovered(attempt=MAX, closed_ago=30.0)])

    assert run(w) == [Open(finding(), MAX, 7), Exhaust("a", MAX)]


# ======================================================================== the simulator

ACTIVE = ("a", "b", "c")
DISABLED = "d"
IGNORED = "e"
INSTANCES = (*ACTIVE, DISABLED, IGNORED)


class Op(enum.Enum):
    """What else happens to an instance in a tick, besides its scanned row."""

    NOTHING = enum.auto()
    BUSY = enum.auto()  # an earlier action on it is still in flight
    PAUSE_MINUTE = enum.auto()  # an operator pauses it for 60 s
    PAUSE_TEN_MINUTES = enum.auto()
    LIFT_PAUSE = enum.auto()
    RESET = enum.auto()  # an operator resets its incident


@dataclass(frozen=True)
class Event:
    """What happens to one instance in one tick, before the scan."""

    row: InstanceRow
    op: Op = Op.NOTHING


@dataclass(frozen=True)
class Tick:
    advance: float  # seconds the clock moves before this cycle
    events: tuple[Event, ...]


@dataclass(frozen=True)
class Cycle:
    """One recorded call of `decide`: its input, its output and the jitter it drew."""

    world: World
    decisions: list[Decision]
    jitters: list[float]


@dataclass
class Sim:
    """Applies decisions to in-memory incidents the way the engine applies them."""

    jitter: random.Random = field(default_factory=lambda: random.Random(0))
    now: datetime = T0
    incidents: dict[str, Incident] = field(default_factory=dict)
    last_closed: dict[str, Incident] = field(default_factory=dict)
    pauses: dict[str, Pause] = field(default_factory=dict)
    carried: dict[int, int] = field(default_factory=dict)  # incident id → carried attempts
    acted: dict[int, list[int]] = field(default_factory=dict)  # incident id → attempts acted
    cycles: list[Cycle] = field(default_factory=list)
    _next_id: int = 1

    def run(self, ticks: Sequence[Tick]) -> Sim:
        for tick in ticks:
            self.step(tick)
        return self

    def step(self, tick: Tick) -> Cycle:
        self.now += timedelta(seconds=tick.advance)
        for event in tick.events:
            self._operate(event)
        w = self._world(tick.events)
        drawn: list[float] = []

        def jitter() -> float:
            drawn.append(self.jitter.random())
            return drawn[-1]

        cycle = Cycle(w, decide(RULES, w, jitter), drawn)
        for decision in cycle.decisions:
            self._apply(decision)
        self.cycles.append(cycle)
        return cycle

    def _world(self, events: Sequence[Event]) -> World:
        """What the engine would hand to `decide` after scanning `events`' rows."""
        findings = {
            f.instance_id: f for e in events if (f := classify(e.row, DETECTION)) is not None
        }
        busy = frozenset(e.row.instance_id for e in events if e.op is Op.BUSY)
        new = [i for i in findings if i not in self.incidents]
        gone = [e.row for e in events if e.row.instance_id in self.incidents]
        unmonitored = {
            r.instance_id: why
            for r in gone
            if r.instance_id not in findings and r.instance_id not in busy
            if (why := unmonitored_reason(r.enabled, r.status, DETECTION)) is not None
        }
        return World(
            now=self.now,
            findings=findings,
            incidents=dict(self.incidents),
            recent={i: self.last_closed[i] for i in new if i in self.last_closed},
            pauses=dict(self.pauses),
            busy=busy,
            unmonitored=unmonitored,
        )

    def _operate(self, event: Event) -> None:
        instance_id = event.row.instance_id
        match event.op:
            case Op.PAUSE_MINUTE | Op.PAUSE_TEN_MINUTES:
                seconds = 60 if event.op is Op.PAUSE_MINUTE else 600
                until = self.now + timedelta(seconds=seconds)
                self.pauses[instance_id] = Pause(instance_id, until, "sim", "operator")
            case Op.LIFT_PAUSE:
                self.pauses.pop(instance_id, None)
            case Op.RESET if instance_id in self.incidents:
                self._close(self.incidents[instance_id], IncidentState.RESET)

    def _apply(self, decision: Decision) -> None:
        match decision:
            case Open(finding=found, carried_attempts=carried):
                opened = Incident(
                    id=self._next_id,
                    instance_id=found.instance_id,
                    reason=found.reason,
                    state=IncidentState.OPEN,
                    attempt=carried,
                    opened_at=self.now,
                    next_action_at=None,
                    process=found.process,
                )
                self._next_id += 1
                self.incidents[found.instance_id] = opened
                self.carried[opened.id] = carried
                self.acted[opened.id] = []
            case Act(instance_id=instance_id, attempt=attempt, delay=delay, action=action):
                current = self.incidents[instance_id]
                self.acted[current.id].append(attempt)
                self.incidents[instance_id] = replace(
                    current,
                    attempt=attempt,
                    last_action=action,
                    next_action_at=self.now + timedelta(seconds=delay),
                )
            case Exhaust(instance_id=instance_id):
                current = self.incidents[instance_id]
                retry_at = self.now + timedelta(seconds=RULES.exhausted_retry)
                self.incidents[instance_id] = replace(
                    current, state=IncidentState.EXHAUSTED, next_action_at=retry_at
                )
            case Resolve(incident=closing):
                self._close(closing, IncidentState.RECOVERED)
            case Dismiss(incident=closing):
                self._close(closing, IncidentState.DISMISSED)

    def _close(self, closing: Incident, state: IncidentState) -> None:
        del self.incidents[closing.instance_id]
        self.last_closed[closing.instance_id] = replace(closing, state=state, closed_at=self.now)


def instance_of(decision: Decision) -> str:
    match decision:
        case Open(finding=found):
            return found.instance_id
        case Resolve(incident=closing) | Dismiss(incident=closing):
            return closing.instance_id
        case Act(instance_id=instance_id) | Exhaust(instance_id=instance_id):
            return instance_id


def summary(decision: Decision) -> tuple[object, ...]:
    match decision:
        case Open(carried_attempts=carried, continues=continues):
            return ("open", carried, continues)
        case Act(attempt=attempt, action=action):
            return ("act", attempt, action)
        case Exhaust(attempt=attempt):
            return ("exhaust", attempt)
        case Resolve(incident=closing):
            return ("resolve", closing.id)
        case Dismiss(incident=closing, why=why):
            return ("dismiss", closing.id, why)


def acts_of(cycle: Cycle) -> list[Act]:
    return [d for d in cycle.decisions if isinstance(d, Act)]


# ---------------------------------------------------------------- simulator: examples


def stale(instance_id: str = "a") -> Event:
    return Event(InstanceRow(instance_id, True, "ONLINE", 500.0, 500.0))


def healthy(instance_id: str = "a") -> Event:
    return Event(InstanceRow(instance_id, True, "ONLINE", 500.0, 1.0))


def ticks(advance: float, *events: Event, times: int = 1) -> list[Tick]:
    return [Tick(advance, events)] * times


def test_a_frozen_instance_climbs_the_whole_ladder_then_exhausts() -> None:
    sim = Sim().run(ticks(400.0, stale(), times=MAX + 3))  # 400 s outlasts every backoff

    acted = [(d.attempt, d.action) for c in sim.cycles for d in acts_of(c)]
    assert acted == [(n, spec_action(n)) for n in range(1, MAX + 1)]
    assert [d for c in sim.cycles for d in c.decisions if isinstance(d, Exhaust)] == [
        Exhaust("a", MAX)
    ]
    assert sim.cycles[-1].decisions == []
    assert sim.incidents["a"].state is IncidentState.EXHAUSTED


def test_an_exhausted_instance_gets_its_last_rung_again_every_exhausted_retry() -> None:
    hour = RULES.exhausted_retry
    sim = Sim().run(ticks(400.0, stale(), times=MAX + 1))  # climbed and exhausted
    assert sim.incidents["a"].state is IncidentState.EXHAUSTED
    assert sim.step(Tick(hour - 1.0, (stale(),))).decisions == []  # not before the hour
    again = acts_of(sim.step(Tick(1.0, (stale(),))))
    last = RULES.ladder[-1].action
    assert [(a.attempt, a.action, a.retry, a.delay) for a in again] == [(MAX + 1, last, True, hour)]
    assert sim.incidents["a"].state is IncidentState.EXHAUSTED  # still exhausted, tried again
    assert [a.attempt for a in acts_of(sim.step(Tick(hour, (stale(),))))] == [MAX + 2]  # hourly


def test_no_retry_of_an_exhausted_instance_when_off_paused_or_braked() -> None:
    exhausted = incident(attempt=MAX, state=IncidentState.EXHAUSTED, next_action_at=T0)
    due = world(findings=[finding()], incidents=[exhausted])
    assert [(type(d), d.attempt) for d in run(due)] == [(Act, MAX + 1)]  # type: ignore[union-attr]
    off = decide(replace(RULES, exhausted_retry=0.0), due, lambda: 0.0)
    assert off == []
    assert run(world(findings=[finding()], incidents=[exhausted], pauses=[pause()])) == []
    assert run(replace(due, brake=True)) == []  # the last rung, process_restart, is braked
    never = world(findings=[finding()], incidents=[replace(exhausted, next_action_at=None)])
    assert run(never) == []  # exhausted before retries existed: not due on its own


def test_flapping_instance_keeps_climbing_across_short_recoveries() -> None:
    flap = [*ticks(400.0, stale()), *ticks(60.0, healthy())] * 4
    sim = Sim().run(flap)

    assert [d.attempt for c in sim.cycles for d in acts_of(c)] == [1, 2, 3, 4]
    assert sim.carried == {1: 0, 2: 1, 3: 2, 4: 3}


def test_instance_healthy_for_longer_than_the_window_starts_over() -> None:
    sim = Sim().run([*ticks(0.0, stale()), *ticks(10.0, healthy()), *ticks(601.0, stale())])

    assert [d.attempt for c in sim.cycles for d in acts_of(c)] == [1, 1]


def test_settling_instance_is_acted_on_at_the_first_scan_after_its_backoff() -> None:
    sim = Sim().run(ticks(10.0, stale(), times=90))  # scans every 10 s for 15 minutes

    acted = [(c.world.now, d) for c in sim.cycles for d in acts_of(c)]
    assert [d.attempt for _, d in acted] == [1, 2, 3, 4, 5, 6, 7]
    for (before, act_), (after, _) in itertools.pairwise(acted):
        assert act_.delay <= (after - before).total_seconds() < act_.delay + 10


def test_operator_reset_makes_the_next_incident_start_over() -> None:
    reset = Event(stale().row, Op.RESET)
    sim = Sim().run([*ticks(400.0, stale(), times=3), *ticks(1.0, reset), *ticks(1.0, stale())])

    assert [d.attempt for c in sim.cycles for d in acts_of(c)] == [1, 2, 3, 1]
    assert sim.last_closed["a"].state is IncidentState.RESET


def test_instance_leaving_our_care_is_dismissed_and_starts_over_when_back() -> None:
    logout = Event(stale().row._replace(status="LOGOUT"))
    sim = Sim().run([*ticks(400.0, stale(), times=3), *ticks(1.0, logout), *ticks(1.0, stale())])

    assert [summary(d) for d in sim.cycles[3].decisions] == [("dismiss", 1, "status LOGOUT")]
    assert [d.attempt for c in sim.cycles for d in acts_of(c)] == [1, 2, 3, 1]


def test_pause_holds_a_frozen_instance_until_it_expires() -> None:
    paused = Event(stale().row, Op.PAUSE_MINUTE)
    sim = Sim().run([*ticks(0.0, paused), *ticks(30.0, stale(), times=3)])

    assert [(c.world.now, [d.attempt for d in acts_of(c)]) for c in sim.cycles] == [
        (at(0), []),
        (at(30), []),
        (at(60), [1]),  # the pause ends at its until time
        (at(90), []),  # settling
    ]


# ------------------------------------------------------------ simulator: random runs

# Scanned rows as (status, status_age, heartbeat_age), sitting on and just past each
# threshold. Healthy shapes come first so that failing runs shrink towards them.
HEALTHY_SHAPES = (
    ("ONLINE", 10.0, 5.0),
    ("ONLINE", 400.0, 90.0),  # heartbeat exactly at stale_after
    ("ONLINE", 90.0, None),  # never beat, exactly at stale_after
    ("CONNECTING", 120.0, 5.0),  # connecting exactly at connecting_after
)
UNHEALTHY_SHAPES = (
    ("ONLINE", 400.0, 90.5),
    ("LOADING", 400.0, 400.0),
    ("ONLINE", 90.5, None),
    ("RECONNECTING", 121.0, 5.0),
    ("INITIALIZING", 400.0, None),
)
LEFT_OUR_CARE = ("LOGOUT", 400.0, 400.0)  # an ignored status: the incident is dismissed
# Weights: mostly unhealthy and rarely reset or dismissed, so that some incidents live long
# enough to climb the whole ladder (see "exhausted" in --hypothesis-show-statistics).
SHAPES = (*HEALTHY_SHAPES, *UNHEALTHY_SHAPES * 3, LEFT_OUR_CARE)
OPS = (
    *[Op.NOTHING] * 30,
    *[Op.BUSY] * 4,
    Op.PAUSE_MINUTE,
    Op.PAUSE_TEN_MINUTES,
    Op.LIFT_PAUSE,
    Op.RESET,
)
ANY_STATUS = ("ONLINE", "CONNECTING", "RECONNECTING", *sorted(DETECTION.ignored_statuses))
IGNORED_SHAPES = tuple(
    (status, age, heartbeat)
    for status in sorted(DETECTION.ignored_statuses)
    for _, age, heartbeat in UNHEALTHY_SHAPES
)

Shape = tuple[str, float, float | None]


def shaped(instance_id: str, shape: Shape, *, enabled: bool = True) -> InstanceRow:
    status, status_age, heartbeat_age = shape
    return InstanceRow(instance_id, enabled, status, status_age, heartbeat_age, f"p-{instance_id}")


# What happens to an active instance in a tick: its scanned row and an operator event.
HAPPENINGS = st.sampled_from(tuple(itertools.product(SHAPES, OPS)))  # (healthy, nothing) first


@st.composite
def tick(draw: st.DrawFn) -> Tick:
    active = []
    for instance_id in ACTIVE:
        shape, op = draw(HAPPENINGS)
        active.append(Event(shaped(instance_id, shape), op))
    disabled = Event(shaped(DISABLED, draw(st.sampled_from(SHAPES)), enabled=False))
    ignored = Event(shaped(IGNORED, draw(st.sampled_from(IGNORED_SHAPES))))
    return Tick(float(draw(st.integers(0, 400))), (*active, disabled, ignored))


def simulations() -> st.SearchStrategy[Sim]:
    return st.builds(
        lambda ticks, seed: Sim(jitter=random.Random(seed)).run(ticks),
        st.lists(tick(), min_size=10, max_size=50),
        st.integers(0, 2**32),
    )


# Each invariant below checks one rule of the spec; one simulated run feeds them all,
# because generating runs is what costs time.


def assert_attempts_count_up_from_carried_without_gaps(sim: Sim) -> None:
    for incident_id, attempts in sim.acted.items():
        first = sim.carried[incident_id] + 1
        assert attempts == list(range(first, first + len(attempts))), incident_id


def assert_acts_take_the_spec_step_and_backoff(cycle: Cycle) -> None:
    acts = acts_of(cycle)
    assert len(cycle.jitters) == len(acts)  # one jitter draw per Act, none otherwise
    for decision, jitter in zip(acts, cycle.jitters, strict=True):
        assert decision.action is spec_action(decision.attempt)
        assert decision.delay == pytest.approx(spec_backoff(decision.attempt, jitter))
        assert decision.finding == cycle.world.findings[decision.instance_id]


def assert_no_act_while_paused_settling_busy_or_exhausted(cycle: Cycle) -> None:
    w = cycle.world
    for decision in acts_of(cycle):
        held = w.pauses.get(decision.instance_id)
        current = w.incidents.get(decision.instance_id)
        assert held is None or held.until <= w.now
        assert decision.instance_id not in w.busy
        if current is None:  # opened this very cycle: its Open comes first
            opening = cycle.decisions[: cycle.decisions.index(decision)]
            assert any(
                isinstance(d, Open)
                and d.finding.instance_id == decision.instance_id
                and d.carried_attempts == decision.attempt - 1
                for d in opening
            )
        else:
            assert current.state is IncidentState.OPEN
            assert current.next_action_at is None or current.next_action_at <= w.now


def assert_attempts_stay_within_max(cycle: Cycle) -> None:
    for decision in cycle.decisions:
        if isinstance(decision, Act):
            assert 1 <= decision.attempt <= MAX
        if isinstance(decision, Exhaust):
            assert decision.attempt == MAX


def assert_disabled_and_ignored_get_no_decision(cycle: Cycle) -> None:
    assert {DISABLED, IGNORED}.isdisjoint(cycle.world.findings)
    assert {DISABLED, IGNORED}.isdisjoint(instance_of(d) for d in cycle.decisions)


def assert_at_most_one_act_per_instance(cycle: Cycle) -> None:
    acted = [d.instance_id for d in acts_of(cycle)]
    assert len(acted) == len(set(acted))


def assert_closes_only_for_instances_absent_from_findings(cycle: Cycle) -> None:
    """Resolve an instance that is healthy again; Dismiss one that left the watchdog's care."""
    w = cycle.world
    for decision in cycle.decisions:
        if isinstance(decision, Resolve | Dismiss):
            instance_id = decision.incident.instance_id
            assert instance_id not in w.findings
            assert w.incidents[instance_id] == decision.incident
            why = decision.why if isinstance(decision, Dismiss) else None
            assert w.unmonitored.get(instance_id) == why
        else:
            assert instance_of(decision) in w.findings


def spec_decisions(w: World, instance_id: str) -> list[tuple[object, ...]]:
    """The spec's decisions for one instance, as (kind, numbers...) tuples.

    Two points the spec leaves open follow the policy: a busy instance (an action in
    flight) is left alone entirely, even when healthy, and a pause also holds back Exhaust.
    """
    found, current = w.findings.get(instance_id), w.incidents.get(instance_id)
    if instance_id in w.busy:
        return []
    if found is None and current is None:
        return []
    if found is None:
        assert current is not None
        why = w.unmonitored.get(instance_id)
        return [("resolve", current.id) if why is None else ("dismiss", current.id, why)]
    if current is None:
        carried, continues = spec_carry(w.recent.get(instance_id), w.now)
        opened: list[tuple[object, ...]] = [("open", carried, continues)]
        return opened + spec_next(w, instance_id, carried)
    if current.state is not IncidentState.OPEN:
        return []
    if current.next_action_at is not None and current.next_action_at > w.now:
        return []
    return spec_next(w, instance_id, current.attempt)


def spec_carry(last: Incident | None, now: datetime) -> tuple[int, int | None]:
    if last is None or last.state is not IncidentState.RECOVERED or last.closed_at is None:
        return 0, None
    if now - last.closed_at > timedelta(seconds=600):
        return 0, None
    return last.attempt, last.id


def spec_next(w: World, instance_id: str, attempt: int) -> list[tuple[object, ...]]:
    held = w.pauses.get(instance_id)
    if held is not None and held.until > w.now:
        return []
    if attempt >= MAX:
        return [("exhaust", attempt)]
    return [("act", attempt + 1, spec_action(attempt + 1))]


def assert_decisions_are_what_the_spec_says(cycle: Cycle) -> None:
    for instance_id in INSTANCES:
        actual = [summary(d) for d in cycle.decisions if instance_of(d) == instance_id]
        assert actual == spec_decisions(cycle.world, instance_id), (instance_id, cycle.world)


CYCLE_INVARIANTS = (
    assert_acts_take_the_spec_step_and_backoff,
    assert_no_act_while_paused_settling_busy_or_exhausted,
    assert_attempts_stay_within_max,
    assert_disabled_and_ignored_get_no_decision,
    assert_at_most_one_act_per_instance,
    assert_closes_only_for_instances_absent_from_findings,
    assert_decisions_are_what_the_spec_says,
)


def note_coverage(sim: Sim) -> None:
    """Label runs for --hypothesis-show-statistics, to show the interesting paths are hit."""
    decisions = [d for c in sim.cycles for d in c.decisions]
    if any(isinstance(d, Exhaust) for d in decisions):
        hypothesis.event("exhausted an incident")
    if any(isinstance(d, Open) and d.continues is not None for d in decisions):
        hypothesis.event("continued a predecessor's count")
    if any(s.state is IncidentState.RESET for s in sim.last_closed.values()):
        hypothesis.event("reset an incident")
    if any(isinstance(d, Dismiss) for d in decisions):
        hypothesis.event("dismissed an incident")


@settings(max_examples=200, deadline=None)
@given(sim=simulations())
def test_simulated_runs_keep_every_invariant(sim: Sim) -> None:
    note_coverage(sim)
    for cycle in sim.cycles:
        for invariant in CYCLE_INVARIANTS:
            invariant(cycle)
    assert_attempts_count_up_from_carried_without_gaps(sim)


# ---------------------------------------------------------- detection: random rows

THRESHOLD_AGES = st.sampled_from([0.0, 89.999, 90.0, 90.001, 119.999, 120.0, 120.001])
any_age = THRESHOLD_AGES | st.floats(0.0, 1e6)


def spec_reasons(r: InstanceRow) -> dict[Reason, tuple[float, float]]:
    """Every rule of the spec that `r` breaks, with the (age, threshold) it broke."""
    if not r.enabled or r.status in {"LOGOUT", "TOS_BLOCK", "BANNED"}:
        return {}
    broken: dict[Reason, tuple[float, float]] = {}
    if r.heartbeat_age is not None and r.heartbeat_age > 90.0:
        broken[Reason.STALE_HEARTBEAT] = (r.heartbeat_age, 90.0)
    if r.heartbeat_age is None and r.status_age > 90.0:
        broken[Reason.NEVER_BEAT] = (r.status_age, 90.0)
    connecting = {"CONNECTING", "RECONNECTING", "INITIALIZING", "LOADING"}
    if r.status in connecting and r.status_age > 120.0:
        broken[Reason.STUCK_CONNECTING] = (r.status_age, 120.0)
    return broken


@settings(max_examples=200, deadline=None)
@given(
    r=st.builds(
        InstanceRow,
        instance_id=st.just("x"),
        enabled=st.booleans(),
        status=st.sampled_from(ANY_STATUS),
        status_age=any_age,
        heartbeat_age=st.none() | any_age,
    )
)
def test_classify_finds_exactly_the_rows_that_break_a_spec_rule(r: InstanceRow) -> None:
    found, broken = classify(r, DETECTION), spec_reasons(r)

    if not broken:
        assert found is None
    else:
        assert found is not None
        assert (found.age, found.threshold) == broken[found.reason]
