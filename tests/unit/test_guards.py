"""The protections against making an outage worse, on the shipped fakes with a fake clock:
grace after our own outage and start, the mass-failure brake, restart budgets, flapping,
and interrupted actions reconciled at start."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.unit.test_engine import API, DB, PROC, STALE, Rig, drive, make_rig
from tests.unit.test_metrics import value
from watchdog.actions.naming import check_safe_name
from watchdog.core.errors import StoreUnavailable
from watchdog.core.model import AuditAction, Finding, IncidentState, Outcome, Scan, Unjudgeable
from watchdog.core.policy import EscalationRules, LadderStep
from watchdog.core.ports import Claim, Opening
from watchdog.core.safety import Restart, SafetyRules, brake_engaged, budget_returns_at
from watchdog.daemon.leadership import Leadership, NodeIdentity
from watchdog.daemon.loop import CycleRunner
from watchdog.daemon.metrics import Metrics
from watchdog.daemon.selfcheck import DaemonMonitor, MemoryWatch
from watchdog.testing import EPOCH, MemoryFleetState, MemoryInstanceStore

PROCESS_ONLY = EscalationRules(
    ladder=(LadderStep(PROC, None, 60.0),), max_attempts=50, backoff_factor=1.0, jitter=0.0
)


class FlakyStore(MemoryInstanceStore):
    """The watchdog's database goes away while `down` is set."""

    down = False

    async def scan(self, known: Mapping[str, Finding] | None = None) -> Scan:
        if self.down:
            raise StoreUnavailable("database unavailable (test)")
        return await super().scan()


# ---------------------------------------------------------------------------- pure


def test_brake_needs_more_than_the_minimum_and_half_the_fleet() -> None:
    rules = SafetyRules()
    assert not brake_engaged(2, 2, rules)  # two is never a fleet-wide failure
    assert brake_engaged(3, 6, rules)
    assert not brake_engaged(3, 7, rules)
    assert not brake_engaged(0, 0, rules)


def test_budget_per_process_and_fleet_wide() -> None:
    rules = SafetyRules()
    t = EPOCH
    three = [Restart("p", t + timedelta(minutes=m)) for m in (0, 5, 10)]
    assert budget_returns_at(three[:2], "p", t + timedelta(minutes=11), rules) is None
    assert budget_returns_at(three, "p", t + timedelta(minutes=11), rules) == t + timedelta(
        minutes=30
    )
    assert budget_returns_at(three, "other", t + timedelta(minutes=11), rules) is None
    six = [Restart(f"p{n}", t + timedelta(minutes=n)) for n in range(6)]
    assert budget_returns_at(six, "new", t + timedelta(minutes=10), rules) == t + timedelta(hours=1)


# --------------------------------------------------------------------------- grace


async def test_no_one_is_judged_during_the_grace_after_start() -> None:
    rig = make_rig(grace=90.0)
    rig.store.add("a")
    rig.clock.advance(STALE)  # stale already when the watchdog starts
    first = await rig.cycle()
    assert first.unhealthy == 1
    assert first.opened == 0
    rig.clock.advance(89)
    assert (await rig.cycle()).opened == 0
    rig.clock.advance(2)
    assert (await rig.cycle()).actions == [("a", API, 1)]


async def test_after_our_database_outage_heartbeats_get_grace_not_restarts() -> None:
    rig = make_rig(grace=90.0)
    store = FlakyStore(rig.clock)
    rig.store.instances = store.instances  # share the fleet
    rig.engine._instances = store  # type: ignore[attr-defined]
    for n in range(5):
        store.add(f"i{n}")
    await rig.cycle()
    rig.clock.advance(95)
    for n in range(5):
        store.beat(f"i{n}")
    store.down = True
    rig.clock.advance(120)  # writers were blocked too: every heartbeat is now stale
    with pytest.raises(StoreUnavailable):
        await rig.engine.run_cycle()
    store.down = False
    back = await rig.cycle()
    assert back.unhealthy == 5
    assert back.opened == 0  # no mass restart when the database returns
    rig.clock.advance(91)
    for n in range(4):
        store.beat(f"i{n}")  # the writers caught up; one instance really is frozen
    report = await rig.cycle()
    assert report.actions == [("i4", API, 1)]


class DroppedLock:
    """A leader lock whose database goes away while `down`: the held lock is lost, and
    taking it again fails as the database is unreachable, as `PgAdvisoryLock` does."""

    down = False

    async def acquire(self) -> bool:
        if self.down:
            raise StoreUnavailable("leader lock unavailable: connection refused (test)")
        return True

    async def held(self) -> bool:
        return not self.down

    async def release(self) -> None:
        return None


class NoNodes:
    async def update(self, *_args: object, **_kwargs: object) -> None:
        return None

    async def demote_others(self, *_args: object) -> None:
        return None


async def test_an_outage_seen_first_by_the_leader_lock_starts_the_grace_too() -> None:
    """The lock check runs before the scan: when it is what meets the outage, the scan
    never fails, and the grace must start all the same."""
    rig = make_rig(grace=90.0)
    lock = DroppedLock()
    me = NodeIdentity("n1", "host", 1)
    lead = Leadership(lock, NoNodes(), rig.ledger, me)
    runner = CycleRunner(rig.engine, leadership=lead)
    for n in range(5):
        rig.store.add(f"i{n}")
    assert await runner.tick()
    rig.clock.advance(95)  # past the grace after start
    for n in range(5):
        rig.store.beat(f"i{n}")
    assert await runner.tick()
    lock.down = True
    for _ in range(3):
        await runner.tick()  # lost the lock, then cannot reach the database to take it
    rig.clock.advance(120)  # heartbeat writers were blocked too: every heartbeat is stale
    lock.down = False
    assert await runner.tick()
    assert runner.last_report is not None
    assert runner.last_report.unhealthy == 5
    assert runner.last_report.opened == 0  # no mass restart when the database returns
    rig.clock.advance(91)
    for n in range(4):
        rig.store.beat(f"i{n}")  # the writers caught up; one instance really is frozen
    assert await runner.tick()
    await rig.engine.drain(5.0)
    assert runner.last_report.actions == [("i4", API, 1)]


class BlindStore(MemoryInstanceStore):
    """Reports the ids in `unreadable` as rows that cannot be judged."""

    unreadable: tuple[str, ...] = ()

    async def scan(self, known: Mapping[str, Finding] | None = None) -> Scan:
        scan = await super().scan()
        rows = tuple(
            Unjudgeable(i, "last_heartbeat_at", "soon", "not a time", "fix it")
            for i in self.unreadable
        )
        return replace(scan, unjudgeable=rows)


async def test_rows_that_cannot_be_judged_raise_one_fleet_alert_until_none_is_left() -> None:
    rig = make_rig(fleet=True)
    store = BlindStore(rig.clock)
    rig.engine._instances = store  # type: ignore[attr-defined]
    store.add("ok")
    await rig.cycle()
    store.unreadable = ("x", "y")
    await rig.cycle()
    store.unreadable = ("x", "y", "z")
    await rig.cycle()  # still present: no second alert
    store.unreadable = ()
    await rig.cycle()
    fleet = [r for r in rig.ledger.rows if r.instance_id == "*"]
    assert [r.action for r in fleet] == [AuditAction.UNJUDGEABLE, AuditAction.UNJUDGEABLE_CLEARED]
    assert fleet[0].detail == {
        "count": 2,
        "columns": {"last_heartbeat_at": 2},
        "sample": ["x", "y"],
    }


# --------------------------------------------------------------------------- brake


async def test_brake_holds_db_flag_and_process_restart_and_is_audited() -> None:
    rig = make_rig(fleet=True)
    for n in range(4):
        rig.store.add(f"i{n}")
    rig.clock.advance(STALE)
    rig.store.beat("i3")  # 3 of 4 down: a shared cause
    first = await rig.cycle()
    assert sorted(first.actions) == [(f"i{n}", API, 1) for n in range(3)]  # gentle rung only
    assert first.brake
    await drive(rig, 3, step=200)
    for n in range(3):
        assert [a for a, _o, _n in rig.trail(f"i{n}") if a != "detected"] == ["api_restart"] * 4
    engaged = [r for r in rig.ledger.rows if r.action is AuditAction.BRAKE_ENGAGED]
    assert len(engaged) == 1
    assert engaged[0].detail == {"unhealthy": 3, "monitored": 4}

    for n in range(3):
        rig.store.beat(f"i{n}")
    assert not (await rig.cycle()).brake
    assert [r.action for r in rig.ledger.rows if r.instance_id == "*"] == [
        AuditAction.BRAKE_ENGAGED,
        AuditAction.BRAKE_RELEASED,
    ]


async def test_when_the_brake_releases_everyone_gets_a_grace_before_escalating() -> None:
    rig = make_rig(fleet=True, grace=STALE)
    for n in range(10):
        rig.store.add(f"i{n}")
    await rig.cycle()  # the start's own grace begins
    rig.clock.advance(STALE)
    for n in range(6, 10):
        rig.store.beat(f"i{n}")
    held = await rig.cycle()  # i0-i5 frozen at once: 6 of 10
    assert held.brake
    for n in range(5):
        rig.store.beat(f"i{n}")  # the fleet comes back but for i5
    rig.clock.advance(1)
    released = await rig.cycle()
    assert not released.brake
    assert released.actions == []  # no rung at once for what the brake held back
    graces = [r for r in rig.ledger.rows if r.action is AuditAction.GRACE]
    assert graces[-1].detail["why"] == "the mass-failure brake released"
    grace_ends = rig.clock.now + timedelta(seconds=STALE)
    acted: list[tuple[str, object]] = []
    for _ in range(80):  # five-second cycles, the others beating: i5 alone comes back
        rig.clock.advance(5)
        for m in range(10):
            if m != 5:
                rig.store.beat(f"i{m}")
        acted += [(i, rig.clock.now) for i, _a, _n in (await rig.cycle()).actions]
    assert {i for i, _at in acted} == {"i5"}
    assert min(at for _i, at in acted) >= grace_ends  # not before the grace is over


async def no_status() -> dict[str, Any]:
    return {}


async def test_a_dry_run_shows_the_brake_it_would_engage_and_writes_nothing() -> None:
    rig = make_rig(fleet=True, dry_run=True)
    for n in range(4):
        rig.store.add(f"i{n}")
    rig.clock.advance(STALE)
    rig.store.beat("i3")  # 3 of 4 down: the brake would hold
    report = await rig.cycle()
    monitor = DaemonMonitor(
        Metrics(process_collector=False),
        MemoryWatch(1 << 30, read_rss=lambda: 0),
        interval=5.0,
        slack=5.0,
        ready_max_age=30.0,
        status=no_status,
    )
    monitor.good(report, 0.01, leader=True)
    assert value(monitor.metrics, "watchdog_brake_engaged") == 1
    assert not [r for r in rig.ledger.rows if r.instance_id == "*"]  # no audit row
    assert fleet_of(rig).brake_state is None  # no fleet-state row

    for n in range(3):
        rig.store.beat(f"i{n}")
    monitor.good(await rig.cycle(), 0.01, leader=True)
    assert value(monitor.metrics, "watchdog_brake_engaged") == 0


# ------------------------------------------------------------------------- budgets


async def test_restart_budget_suppresses_and_resumes() -> None:
    rig = make_rig(fleet=True, rules=PROCESS_ONLY)
    rig.store.add("a", process="p1")
    for n in range(3):
        rig.store.add(f"healthy{n}")
    rig.clock.advance(STALE)
    for n in range(3):
        rig.store.beat(f"healthy{n}")
    await rig.cycle()
    for _ in range(2):
        rig.clock.advance(61)
        for n in range(3):
            rig.store.beat(f"healthy{n}")
        await rig.cycle()
    assert len(rig.calls(PROC)) == 3
    rig.clock.advance(61)
    for n in range(3):
        rig.store.beat(f"healthy{n}")
    await rig.cycle()
    assert len(rig.calls(PROC)) == 3  # the 4th restart within 30 minutes is held back
    suppressed = rig.rows("a", AuditAction.SUPPRESSED)
    assert len(suppressed) == 1
    assert suppressed[0].outcome is Outcome.SKIPPED
    assert suppressed[0].detail["process"] == "p1"
    assert rig.state("a") is IncidentState.SUPPRESSED
    rig.clock.advance(30 * 60)
    for n in range(3):
        rig.store.beat(f"healthy{n}")
    report = await rig.cycle()
    assert report.actions == [("a", PROC, 4)]
    assert rig.state("a") is IncidentState.OPEN


def restart_rig(fence: Callable[[], Awaitable[bool]] | None = None) -> Rig:
    """Process restarts from the first attempt, budgets on, no brake, one frozen instance."""
    safety = SafetyRules(brake_min_unhealthy=100)
    rig = make_rig(fleet=True, rules=PROCESS_ONLY, safety=safety, fence=fence)
    rig.store.add("a", process="p1")
    rig.clock.advance(STALE)
    return rig


def fleet_of(rig: Rig) -> MemoryFleetState:
    assert rig.fleet is not None
    return rig.fleet


async def test_a_restart_whose_claim_is_lost_spends_no_budget() -> None:
    rig = restart_rig()
    claim = rig.ledger.begin_actions

    async def rival_first(claims: Sequence[Claim], now: datetime) -> list[int | None]:
        await claim(claims, now)  # another node claims the same attempts first
        return await claim(claims, now)

    rig.ledger.begin_actions = rival_first  # type: ignore[method-assign]
    report = await rig.cycle()
    assert report.actions == []
    assert fleet_of(rig).restarts == []  # nothing ran here, so nothing is counted
    assert rig.calls(PROC) == []


async def test_a_restart_claimed_by_a_leader_losing_the_lead_before_its_call_is_not_counted() -> (
    None
):
    asked: list[bool] = []

    async def fence() -> bool:  # leads at the claim, lost by the time of the call
        asked.append(True)
        return len(asked) == 1

    rig = restart_rig(fence)
    report = await rig.cycle()
    assert report.actions == [("a", PROC, 1)]  # claimed
    assert rig.calls(PROC) == []  # but never called
    assert rig.rows("a", AuditAction.PROCESS_RESTART)[-1].detail == {"reason": "lost_leadership"}
    assert fleet_of(rig).restarts == []  # so the budget is untouched


async def test_a_restart_left_by_a_shutdown_before_its_claim_spends_no_budget() -> None:
    rig = restart_rig()
    fleet = fleet_of(rig)
    read = fleet.recent_restarts

    async def signal_meanwhile(since: datetime) -> list[Restart]:
        rig.engine.stop_acting()  # SIGTERM arrives while the budget is being read
        return await read(since)

    fleet.recent_restarts = signal_meanwhile  # type: ignore[method-assign]
    report = await rig.cycle()
    assert report.actions == []
    assert fleet.restarts == []


async def test_restarts_admitted_in_one_cycle_never_overshoot_the_fleet_budget() -> None:
    rig = make_rig(
        fleet=True,
        rules=PROCESS_ONLY,
        safety=SafetyRules(brake_min_unhealthy=100, fleet_restarts=3),
    )
    for n in range(5):
        rig.store.add(f"i{n}", process=f"p{n}")
    rig.clock.advance(STALE)
    report = await rig.cycle()
    assert len(report.actions) == 3
    assert len(fleet_of(rig).restarts) == 3
    assert len(rig.calls(PROC)) == 3
    assert len([r for r in rig.ledger.rows if r.action is AuditAction.SUPPRESSED]) == 2


# ------------------------------------------------------------------------ flapping


async def test_the_fourth_incident_within_an_hour_is_flapping() -> None:
    rig = make_rig()
    rig.store.add("a")
    for _ in range(4):
        rig.clock.advance(STALE)
        await rig.cycle()
        rig.store.beat("a")
        await rig.cycle()
    flapping = rig.rows("a", AuditAction.FLAPPING)
    assert len(flapping) == 1
    assert flapping[0].detail == {"incidents_in_window": 4}


# ------------------------------------------------------------------ interrupted


async def test_an_intent_without_outcome_is_reconciled_once_and_not_repeated() -> None:
    rig = make_rig()
    rig.store.add("a")
    rig.clock.advance(STALE)
    scan = await rig.store.scan()
    (incident,) = await rig.ledger.open_incidents([Opening(scan.findings["a"], 0, None)], scan.now)
    retry_at = scan.now + timedelta(seconds=30)
    # The watchdog dies between the intent and the outcome of attempt 1.
    assert await rig.ledger.begin_actions([Claim(incident, 1, API, retry_at)], scan.now) != [None]

    rows = await rig.ledger.interrupt(await rig.ledger.orphan_intents(), "stopped")
    assert [(r.action, r.outcome, r.attempt) for r in rows] == [
        (AuditAction.API_RESTART, Outcome.INTERRUPTED, 1)
    ]
    assert await rig.ledger.orphan_intents() == []
    report = await rig.cycle()
    assert report.actions == []  # attempt 1 was claimed: it is not silently repeated
    rig.clock.advance(31)
    assert (await rig.cycle()).actions == [("a", API, 2)]


# ------------------------------------------------------------------------ breakers


async def test_an_open_breaker_skips_the_rung_and_the_ladder_goes_on() -> None:
    ids = [f"i{n}" for n in range(6)]
    rig = make_rig(breakers=True, safety=SafetyRules(brake_min_unhealthy=100))
    rig.recoveries[API] = type(rig.recoveries[API])(API, fail=set(ids))
    for instance_id in ids:
        rig.store.add(instance_id)
    rig.clock.advance(STALE)
    await rig.cycle()  # six failing api_restart calls: the breaker opens after five
    opened = [r for r in rig.ledger.rows if r.action is AuditAction.BREAKER_OPENED]
    assert len(opened) == 1
    assert opened[0].detail["backend"] == "api_restart"
    assert len(rig.calls(API)) == 6
    rig.clock.advance(46)
    report = await rig.cycle()  # attempt 2 is api_restart again: not tried, but spent
    assert len(rig.calls(API)) == 6
    assert sorted(report.actions) == [(i, API, 2) for i in ids]
    skipped = rig.rows("i0", AuditAction.API_RESTART)[-1]
    assert (skipped.outcome, skipped.detail["reason"]) == (Outcome.SKIPPED, "circuit_open")
    rig.clock.advance(70)
    third = await rig.cycle()
    assert sorted(third.actions) == [(i, DB, 3) for i in ids]  # the next rung is taken
    snapshot = rig.engine._breakers.board.get("api_restart").snapshot()  # type: ignore[union-attr]
    assert (snapshot.state, snapshot.total, snapshot.total_failures) == ("open", 6, 6)


async def test_targets_that_cannot_be_addressed_never_open_the_breaker() -> None:
    """Refused before any call (unsafe id, no process): one hostile row must not switch a
    rung off for the whole fleet."""
    restart_first = EscalationRules(
        ladder=(LadderStep(PROC, None, 10.0),), max_attempts=50, backoff_factor=1.0
    )
    rig = make_rig(rules=restart_first, breakers=True, safety=SafetyRules(brake_min_unhealthy=100))
    hostile = [f"bad{n}" for n in range(6)]
    for instance_id in hostile:
        rig.store.add(instance_id)  # no process: the backend cannot be asked
    rig.store.add("a", process="p1")
    rig.clock.advance(STALE)
    for _ in range(3):
        await rig.cycle()
        rig.clock.advance(11)
    failed = [r for r in rig.ledger.rows if r.outcome is Outcome.FAILED]
    assert len(failed) == 18
    assert all(r.detail["invalid_target"] for r in failed)
    assert not [r for r in rig.ledger.rows if r.action is AuditAction.BREAKER_OPENED]
    assert [r.outcome for r in rig.rows("a", AuditAction.PROCESS_RESTART)][1::2] == [Outcome.OK] * 3


async def test_a_restart_an_open_breaker_skips_spends_no_restart_budget() -> None:
    restart_first = EscalationRules(ladder=(LadderStep(PROC, None, 10.0),))
    safety = SafetyRules(brake_min_unhealthy=100, fleet_restarts=6)
    rig = make_rig(rules=restart_first, safety=safety, fleet=True, breakers=True)
    ids = [f"i{n}" for n in range(5)]
    rig.recoveries[PROC] = type(rig.recoveries[PROC])(PROC, key_by="process", fail=set(ids))
    for n, instance_id in enumerate(ids):
        rig.store.add(instance_id, process=f"p{n}")
    rig.clock.advance(STALE)
    await rig.cycle()  # five failing restarts of five processes: the breaker opens
    fleet = fleet_of(rig)
    assert len(fleet.restarts) == 5
    rig.clock.advance(11)  # attempt 2 is due; the breaker stays open for 60 s
    report = await rig.cycle()  # attempt 2 of each: skipped by the open breaker
    assert sorted(report.actions) == [(i, PROC, 2) for i in ids]
    assert all(
        rig.rows(i, AuditAction.PROCESS_RESTART)[-1].detail["reason"] == "circuit_open" for i in ids
    )
    assert len(fleet.restarts) == 5  # the budget (6 an hour) is not spent on skips
    assert not [r for r in rig.ledger.rows if r.action is AuditAction.SUPPRESSED]


async def test_a_process_named_like_a_marker_is_counted_against_its_budget() -> None:
    """`invalid:app` passes the safe-name check: a real process, whose restarts count."""
    assert check_safe_name("process name", "invalid:app") == "invalid:app"
    rig = make_rig(fleet=True, rules=PROCESS_ONLY, safety=SafetyRules(brake_min_unhealthy=100))
    rig.store.add("a", process="invalid:app")
    rig.clock.advance(STALE)
    await rig.cycle()
    await drive(rig, 3, step=61)
    assert len(rig.calls(PROC)) == 3  # the 4th restart within 30 minutes is held back
    fleet = fleet_of(rig)
    assert [r.process for r, _ids in fleet.restarts] == ["invalid:app"] * 3
    assert rig.state("a") is IncidentState.SUPPRESSED
