"""The engine's cycle on the in-memory fakes: detection, escalation, audit and its edges.

Time is a `FakeClock` that moves only when a test advances it; jitter is 0, so the waits
are exactly settle × 1.5^(attempt−1) capped at 300 s. `cycle()` runs one cycle and then
waits for its actions, as the daemon would before the next tick.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta

import pytest

from watchdog.core.breaker import BreakerRules
from watchdog.core.model import (
    FLEET,
    Action,
    ActionResult,
    AuditAction,
    AuditRow,
    Finding,
    IncidentState,
    Outcome,
    Pause,
    Scan,
    Selector,
    SelectorKind,
    Target,
)
from watchdog.core.pacing import TokenBucket
from watchdog.core.policy import DetectionRules, EscalationRules, LadderStep
from watchdog.core.ports import AuditQuery
from watchdog.core.safety import SafetyRules
from watchdog.engine.breakers import BackendBreakers
from watchdog.engine.cycle import CYCLE_BUDGET, Engine
from watchdog.engine.guards import Guards
from watchdog.engine.hosts import Hosts
from watchdog.engine.report import CycleReport
from watchdog.testing import (
    FakeClock,
    MemoryFleetState,
    MemoryInstanceStore,
    MemoryLedger,
    RecordingRecovery,
)

API, DB, PROC = Action.API_RESTART, Action.DB_FLAG, Action.PROCESS_RESTART
STALE = 91.0  # just past DetectionRules.stale_after
# Attempts 1..10 of the default ladder and the wait after each (jitter 0).
LADDER = [
    (API, 30.0),
    (API, 45.0),
    (DB, 67.5),
    (DB, 101.25),
    (DB, 151.875),
    *[(PROC, 300.0)] * 5,
]


@dataclass
class Rig:
    clock: FakeClock
    store: MemoryInstanceStore
    ledger: MemoryLedger
    recoveries: dict[Action, RecordingRecovery]
    engine: Engine
    fleet: MemoryFleetState | None = None

    async def cycle(self) -> CycleReport:
        report = await self.engine.run_cycle()
        assert await self.engine.drain(timeout=5.0)
        return report

    def trail(self, instance_id: str) -> list[tuple[str, str, int | None]]:
        """(action, outcome, attempt) of the instance's audit rows, oldest first."""
        return [
            (str(r.action), str(r.outcome), r.attempt)
            for r in self.ledger.rows
            if r.instance_id == instance_id
        ]

    def rows(self, instance_id: str, action: AuditAction) -> list[AuditRow]:
        rows = self.ledger.rows
        return [r for r in rows if r.instance_id == instance_id and r.action is action]

    def calls(self, action: Action) -> list[str]:
        return [t.instance_id for t in self.recoveries[action].calls]

    def state(self, instance_id: str) -> IncidentState:
        mine = [i for i in self.ledger.incidents.values() if i.instance_id == instance_id]
        return mine[-1].state


def make_rig(
    *,
    rules: EscalationRules | None = None,
    dry_run: bool = False,
    recoveries: dict[Action, RecordingRecovery] | None = None,
    safety: SafetyRules | None = None,
    fleet: bool = False,
    grace: float = 0.0,
    breakers: bool = False,
    fence: Callable[[], Awaitable[bool]] | None = None,
    hosts: bool = False,
    pacers: dict[Action, TokenBucket] | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    budget: int = CYCLE_BUDGET,
    knowing: bool = False,
) -> Rig:
    """`hosts`: the process rung knows its processes (generations, cooldown, blast
    radius); it needs `fleet`. `knowing`: the store reuses the findings it is told, as
    the SQL store does."""
    clock = FakeClock()
    store = (KnowingStore if knowing else MemoryInstanceStore)(clock, DetectionRules())
    ledger = MemoryLedger(clock)
    recs = {
        API: RecordingRecovery(API),
        DB: RecordingRecovery(DB),
        PROC: RecordingRecovery(PROC, key_by="process"),
        **(recoveries or {}),
    }
    fleet_state = MemoryFleetState(ledger) if fleet or hosts else None
    rung = recs[PROC]
    host_watch = None
    if hosts:
        assert fleet_state is not None
        settle = (rules or EscalationRules()).settle_of(PROC)
        host_watch = Hosts(
            ledger, fleet_state, store, rung, safety or SafetyRules(), settle, source=rung
        )
    engine = Engine(
        store,
        ledger,
        recs,
        rules or EscalationRules(),
        clock,
        dry_run=dry_run,
        jitter=lambda: 0.0,
        timeout_margin=0.0,
        guards=Guards(
            ledger,
            fleet_state,
            safety or SafetyRules(),
            grace=grace,
            startup_grace=grace > 0,
        ),
        breakers=BackendBreakers(BreakerRules(), {PROC: "supervisor"}, ledger)
        if breakers
        else None,
        hosts=host_watch,
        pacers=pacers,
        sleep=sleep or asyncio.sleep,
        fence=fence,
        budget=budget,
    )
    return Rig(clock, store, ledger, recs, engine, fleet_state)


class KnowingStore(MemoryInstanceStore):
    """Gives back the finding it is told the caller judged before, ages and all, for a
    row still unhealthy (as the SQL store does), and keeps which ids it was told."""

    told: list[set[str]]

    async def scan(self, known: Mapping[str, Finding] | None = None) -> Scan:
        self.told = [*getattr(self, "told", []), set(known or ())]
        scan = await super().scan()
        if not known:
            return scan
        return replace(scan, findings={i: known.get(i, f) for i, f in scan.findings.items()})


def started_then_outcome(attempts: range, outcome: str = "ok") -> list[tuple[str, str, int]]:
    """The audit trail of attempts on the default ladder: each `started`, then its outcome."""
    trail = []
    for n in attempts:
        action = str(LADDER[n - 1][0])
        trail += [(action, "started", n), (action, outcome, n)]
    return trail


async def drive(rig: Rig, cycles: int, *, step: float = 301.0) -> list[CycleReport]:
    """Run `cycles` cycles, advancing past the longest backoff before each."""
    reports = []
    for _ in range(cycles):
        rig.clock.advance(step)
        reports.append(await rig.cycle())
    return reports


# ----------------------------------------------------------------------- escalation


async def test_frozen_instance_climbs_the_ladder_as_each_backoff_passes() -> None:
    rig = make_rig()
    rig.store.add("a", process="p1")
    rig.clock.advance(STALE)

    for attempt, (action, wait) in enumerate(LADDER, start=1):
        report = await rig.cycle()
        assert report.actions == [("a", action, attempt)]
        rig.clock.advance(wait - 1)
        early = await rig.cycle()
        assert early.actions == [], f"attempt {attempt + 1} came before its backoff"
        rig.clock.advance(1)

    assert rig.calls(API) == ["a"] * 2
    assert rig.calls(DB) == ["a"] * 3
    assert rig.calls(PROC) == ["a"] * 5
    assert rig.recoveries[PROC].calls[0] == Target("a", "p1")
    assert rig.trail("a") == [("detected", "ok", 0), *started_then_outcome(range(1, 11))]
    assert rig.state("a") is IncidentState.OPEN


async def test_outcome_rows_carry_duration_and_backoff_starts_when_the_action_ends() -> None:
    rig = make_rig()
    rig.store.add("a")
    rig.clock.advance(STALE)
    await rig.cycle()

    (ok,) = [r for r in rig.rows("a", AuditAction.API_RESTART) if r.outcome is Outcome.OK]
    assert ok.duration == 0.0
    assert ok.detail == {"fake": "api_restart", "key": "a"}
    (incident,) = rig.ledger.incidents.values()
    assert incident.next_action_at == rig.clock.now + timedelta(seconds=30)
    assert incident.last_action is API


async def test_after_max_attempts_the_incident_is_exhausted_and_left_alone() -> None:
    rig = make_rig(rules=EscalationRules(max_attempts=3))
    rig.store.add("a")
    rig.clock.advance(STALE)
    await rig.cycle()
    reports = await drive(rig, 2)
    assert [r.actions for r in reports] == [[("a", API, 2)], [("a", DB, 3)]]

    (exhausting,) = await drive(rig, 1)
    assert exhausting.exhausted == 1
    assert exhausting.actions == []
    assert rig.state("a") is IncidentState.EXHAUSTED
    (row,) = rig.rows("a", AuditAction.EXHAUSTED)
    assert (row.outcome, row.attempt, row.detail) == (Outcome.OK, 3, {"attempts": 3})

    later = await drive(rig, 3)
    assert [(r.actions, r.exhausted, r.unhealthy) for r in later] == [([], 0, 1)] * 3
    assert len(rig.calls(API)) + len(rig.calls(DB)) == 3
    assert len(rig.rows("a", AuditAction.EXHAUSTED)) == 1


async def test_an_exhausted_instance_that_beats_again_is_recovered() -> None:
    rig = make_rig(rules=EscalationRules(max_attempts=1))
    rig.store.add("a")
    rig.clock.advance(STALE)
    await rig.cycle()
    await drive(rig, 1)
    assert rig.state("a") is IncidentState.EXHAUSTED

    rig.store.beat("a")
    report = await rig.cycle()
    assert report.resolved == 1
    assert rig.state("a") is IncidentState.RECOVERED


# ------------------------------------------------------------------ who is touched


async def test_a_healthy_instance_is_never_touched() -> None:
    rig = make_rig()
    rig.store.add("a")
    for _ in range(20):
        rig.clock.advance(60)
        rig.store.beat("a")
        report = await rig.cycle()
        assert (report.unhealthy, report.opened, report.acted) == (0, 0, 0)

    assert rig.ledger.rows == []
    assert all(r.calls == [] for r in rig.recoveries.values())
    assert rig.store.scan_count == 20


@pytest.mark.parametrize(
    ("enabled", "status"),
    [(False, "CONNECTED"), (True, "BANNED"), (True, "LOGOUT"), (False, "CONNECTING")],
)
async def test_disabled_and_ignored_instances_are_never_touched(enabled: bool, status: str) -> None:
    rig = make_rig()
    rig.store.add("quiet", enabled=enabled, status=status, beat=False)
    rig.store.add("frozen")  # a control: the cycles do act on someone
    rig.clock.advance(STALE)
    await rig.cycle()
    await drive(rig, 10)

    assert rig.trail("quiet") == []
    assert "quiet" not in {t.instance_id for r in rig.recoveries.values() for t in r.calls}
    assert len(rig.calls(API)) == 2


async def test_an_instance_that_beats_again_gets_its_incident_closed() -> None:
    rig = make_rig()
    rig.store.add("a")
    rig.clock.advance(STALE)
    opened = await rig.cycle()
    assert opened.opened == 1
    rig.clock.advance(12.5)
    rig.store.beat("a")

    report = await rig.cycle()
    assert report.resolved == 1
    (row,) = rig.rows("a", AuditAction.RECOVERED)
    assert row.outcome is Outcome.OK
    assert row.detail == {"time_to_recover": 12.5, "attempts": 1}
    (incident,) = rig.ledger.incidents.values()
    assert incident.state is IncidentState.RECOVERED
    assert incident.closed_at == rig.clock.now
    assert (await rig.cycle()).resolved == 0  # closed once


async def test_a_recovery_that_works_closes_the_incident_on_the_next_cycle() -> None:
    rig = make_rig()
    rig.recoveries[API].effect = lambda target: rig.store.beat(target.instance_id)
    rig.store.add("a")
    rig.clock.advance(STALE)
    await rig.cycle()
    rig.clock.advance(5)
    await rig.cycle()

    assert rig.trail("a") == [
        ("detected", "ok", 0),
        ("api_restart", "started", 1),
        ("api_restart", "ok", 1),
        ("recovered", "ok", 1),
    ]


# ------------------------------------------------------------------------ flapping


async def relapse(rig: Rig, gap: float) -> CycleReport:
    """Two attempts, recovery, then frozen again `gap` seconds after the close."""
    rig.store.add("a")
    rig.clock.advance(STALE)
    await rig.cycle()
    await drive(rig, 1)
    rig.store.beat("a")
    assert (await rig.cycle()).resolved == 1
    rig.clock.advance(gap)
    return await rig.cycle()


@pytest.mark.parametrize("gap", [STALE, 599.0, 600.0])
async def test_a_relapse_within_ten_minutes_continues_the_attempt_count(gap: float) -> None:
    rig = make_rig()
    report = await relapse(rig, gap)

    assert report.opened == 1
    assert report.actions == [("a", DB, 3)]
    first, second = rig.ledger.incidents.values()
    detected = rig.rows("a", AuditAction.DETECTED)[-1]
    assert detected.attempt == 2
    assert detected.detail["continues"] == first.id
    assert detected.detail["carried_attempts"] == 2
    assert second.attempt == 3


@pytest.mark.parametrize("gap", [601.0, 3600.0])
async def test_a_relapse_after_ten_minutes_starts_from_one(gap: float) -> None:
    rig = make_rig()
    report = await relapse(rig, gap)

    assert report.actions == [("a", API, 1)]
    detected = rig.rows("a", AuditAction.DETECTED)[-1]
    assert detected.attempt == 0
    assert "continues" not in detected.detail


# -------------------------------------------------------------------------- pauses


async def test_a_paused_instance_is_detected_but_not_acted_on() -> None:
    rig = make_rig()
    rig.store.add("a")
    until = rig.clock.now + timedelta(seconds=600)
    await rig.ledger.pause(Pause("a", until, "maintenance", "ops"), rig.clock.now)
    rig.clock.advance(STALE)

    first = await rig.cycle()
    assert (first.unhealthy, first.opened, first.actions) == (1, 1, [])
    later = await drive(rig, 1, step=400)
    assert later[0].actions == []
    assert rig.trail("a") == [("paused", "ok", None), ("detected", "ok", 0)]
    assert all(r.calls == [] for r in rig.recoveries.values())

    rig.clock.advance(200)  # the pause has expired
    report = await rig.cycle()
    assert report.actions == [("a", API, 1)]


# --------------------------------------------------------------- failing recoveries


async def test_a_hanging_recovery_times_out_without_stalling_detection() -> None:
    hang = RecordingRecovery(API, timeout=0.05, hang={"a"})
    rig = make_rig(recoveries={API: hang})
    rig.store.add("a")
    rig.store.add("b")
    rig.clock.advance(STALE)
    rig.store.beat("b")

    first = await rig.engine.run_cycle()  # not drained: "a" is still hanging
    assert first.actions == [("a", API, 1)]
    assert rig.engine.busy == {"a"}
    rig.clock.advance(STALE)  # "b" freezes too; "a" would be due again if it were idle

    second = await rig.engine.run_cycle()
    assert second.unhealthy == 2
    assert second.opened == 1
    assert second.actions == [("b", API, 1)]
    assert rig.engine.busy == {"a", "b"}

    assert await rig.engine.drain(timeout=5.0)
    assert rig.engine.busy == frozenset()
    assert rig.calls(API) == ["a", "b"]
    assert rig.trail("a") == [
        ("detected", "ok", 0),
        ("api_restart", "started", 1),
        ("api_restart", "failed", 1),
    ]
    failed = rig.rows("a", AuditAction.API_RESTART)[-1]
    assert "timed out" in failed.detail["error"]
    assert failed.detail == {"error": "timed out after 0.05s", "transient": True}
    assert rig.trail("b")[-1] == ("api_restart", "ok", 1)


async def test_a_transient_failure_is_audited_and_retried_after_the_backoff() -> None:
    rig = make_rig(recoveries={API: RecordingRecovery(API, fail={"a"})})
    rig.store.add("a")
    rig.clock.advance(STALE)
    await rig.cycle()

    failed = rig.rows("a", AuditAction.API_RESTART)[-1]
    assert failed.outcome is Outcome.FAILED
    assert failed.detail == {"error": "api_restart refused for 'a'", "transient": True}
    assert rig.state("a") is IncidentState.OPEN

    rig.clock.advance(30)
    report = await rig.cycle()
    assert report.actions == [("a", API, 2)]
    assert rig.trail("a")[1:] == started_then_outcome(range(1, 3), "failed")


async def test_instances_sharing_a_process_share_one_restart() -> None:
    rig = make_rig(safety=SafetyRules(brake_min_unhealthy=10))  # all three are down: no brake
    rig.store.add("a", process="p1")
    rig.store.add("b", process="p1")
    rig.store.add("c", process="p2")
    rig.clock.advance(STALE)
    await rig.cycle()
    reports = await drive(rig, 5)

    assert reports[-1].actions == [("a", PROC, 6), ("b", PROC, 6), ("c", PROC, 6)]
    assert sorted(rig.calls(API)) == ["a", "a", "b", "b", "c", "c"]  # keyed by instance
    assert [t.process for t in rig.recoveries[PROC].calls] == ["p1", "p2"]
    for instance_id in "ab":
        started, done = rig.rows(instance_id, AuditAction.PROCESS_RESTART)
        assert (started.outcome, done.outcome) == (Outcome.STARTED, Outcome.OK)
        assert done.detail["shared_with"] == ["a", "b"]
        assert done.attempt == 6
    (_, alone) = rig.rows("c", AuditAction.PROCESS_RESTART)
    assert alone.outcome is Outcome.OK
    assert "shared_with" not in alone.detail


async def test_an_unkeyable_target_gets_its_own_call_and_fails_permanently() -> None:
    rules = EscalationRules(max_attempts=1, ladder=EscalationRules().ladder[2:])
    rig = make_rig(rules=rules)
    rig.store.add("a")  # no process: the process recovery cannot key it
    rig.store.add("b")
    rig.clock.advance(STALE)
    await rig.cycle()

    assert rig.calls(PROC) == ["a", "b"]
    for instance_id in "ab":
        failed = rig.rows(instance_id, AuditAction.PROCESS_RESTART)[-1]
        assert failed.outcome is Outcome.FAILED
        assert failed.detail["transient"] is False
        assert "shared_with" not in failed.detail


# ------------------------------------------------------------------------ shutdown


async def test_after_stop_acting_no_new_action_is_started_but_detection_goes_on() -> None:
    rig = make_rig()
    rig.store.add("a")
    rig.clock.advance(STALE)
    await rig.cycle()
    rig.store.add("b")
    rig.clock.advance(STALE)  # "a" is due for attempt 2, "b" newly stale
    rig.engine.stop_acting()
    report = await rig.cycle()

    assert report.actions == []
    assert rig.calls(API) == ["a"]
    assert rig.trail("b") == [("detected", "ok", 0)]  # its incident is open for the next start
    assert rig.trail("a")[-1] == ("api_restart", "ok", 1)


# ------------------------------------------------------------------------- dry run


async def test_dry_run_writes_only_skipped_rows_and_changes_nothing() -> None:
    rig = make_rig(dry_run=True)
    rig.store.add("a")
    rig.store.add("ok")
    rig.clock.advance(STALE)
    reports = []
    for _ in range(3):
        rig.store.beat("ok")
        reports.append(await rig.cycle())
        rig.clock.advance(60)

    assert [r.actions for r in reports] == [[("a", API, 1)]] * 3
    assert {r.outcome for r in rig.ledger.rows} == {Outcome.SKIPPED}
    assert all(r.detail.get("dry_run") is True for r in rig.ledger.rows)
    # The same would-be decision every cycle is recorded once, not once a cycle.
    assert rig.trail("a") == [("detected", "skipped", 0), ("api_restart", "skipped", 1)]
    assert rig.ledger.incidents == {}
    assert await rig.ledger.load_open() == {}
    assert all(r.calls == [] for r in rig.recoveries.values())
    assert rig.store.instances["a"].force_reconnect is False


async def test_dry_run_records_an_instance_afresh_after_it_was_healthy() -> None:
    rig = make_rig(dry_run=True)
    rig.store.add("a")
    rig.clock.advance(STALE)
    await rig.cycle()
    rig.store.beat("a")
    await rig.cycle()  # healthy: nothing to record, and "a" is forgotten
    rig.clock.advance(STALE)
    await rig.cycle()
    await rig.cycle()

    once = [("detected", "skipped", 0), ("api_restart", "skipped", 1)]
    assert rig.trail("a") == once * 2


def dry_engine(live: Rig) -> Engine:
    """A dry-run engine beside `live`, on the same store, ledger and clock."""
    return Engine(
        live.store,
        live.ledger,
        live.recoveries,
        EscalationRules(),
        live.clock,
        dry_run=True,
        jitter=lambda: 0.0,
    )


async def test_dry_run_leaves_existing_incidents_alone() -> None:
    live = make_rig()
    live.store.add("a")
    live.clock.advance(STALE)
    await live.cycle()
    dry = dry_engine(live)
    before = dict(live.ledger.incidents)
    live.clock.advance(30)
    due = await dry.run_cycle()
    live.store.beat("a")
    healthy = await dry.run_cycle()

    assert due.actions == [("a", API, 2)]
    assert healthy.actions == []
    assert live.ledger.incidents == before
    assert live.trail("a")[-2:] == [("api_restart", "skipped", 2), ("recovered", "skipped", 1)]
    assert live.calls(API) == ["a"]


async def test_dry_run_treats_an_incident_it_would_close_as_closed_until_it_freezes_again() -> None:
    live = make_rig()
    live.store.add("a")
    live.clock.advance(STALE)
    await live.cycle()  # a real incident, open at attempt 1
    dry = dry_engine(live)
    live.store.beat("a")
    first = await dry.run_cycle()
    assert first.open_by_state == {"open": 1}
    live.store.set_enabled("a", False)  # a live daemon closed it above: no dismiss now
    live.clock.advance(5)
    later = await dry.run_cycle()
    assert later.open_by_state == {}
    assert [r.action for r in live.ledger.rows if r.outcome is Outcome.SKIPPED] == [
        AuditAction.RECOVERED
    ]
    live.store.set_enabled("a", True)
    live.clock.advance(STALE + 60)  # frozen again: the real incident is still open
    again = await dry.run_cycle()
    assert again.open_by_state == {"open": 1}
    assert again.actions == [("a", API, 2)]


# ------------------------------------------------------------- the fakes' contract


async def test_memory_ledger_audit_query_and_resume() -> None:
    clock = FakeClock()
    ledger = MemoryLedger(clock)
    assert await ledger.resume("a", "ops") is False
    await ledger.pause(Pause("a", clock.now + timedelta(seconds=10), "x", "ops"), clock.now)
    clock.advance(11)
    assert await ledger.resume("a", "ops") is False  # expired: tidied away, no row
    assert ledger.pauses == {}
    await ledger.pause(Pause("a", clock.now + timedelta(seconds=10), "x", "ops"), clock.now)
    assert await ledger.resume("a", "ops") is True

    rows = await ledger.audit(AuditQuery(limit=2))
    assert [(r.id, r.action) for r in rows] == [(2, AuditAction.PAUSED), (3, AuditAction.RESUMED)]
    paused = await ledger.audit(AuditQuery(actions=[AuditAction.PAUSED]))
    assert [r.id for r in paused] == [1, 2]
    assert await ledger.audit(AuditQuery(since=clock.now + timedelta(seconds=1))) == []
    assert await ledger.audit(AuditQuery(instance_id="b")) == []


class _Crashing(RecordingRecovery):
    """An adapter with a bug: it raises something outside the project's error tree."""

    async def recover(self, target: Target) -> ActionResult:
        self.calls.append(target)
        raise RuntimeError("adapter bug")


async def test_an_adapter_crash_still_leaves_an_outcome_row() -> None:
    rig = make_rig(recoveries={API: _Crashing(API)})
    rig.store.add("a")
    rig.clock.advance(STALE)
    await rig.engine.run_cycle()
    await rig.engine.drain()
    assert rig.trail("a")[-1] == ("api_restart", "failed", 1)
    row = rig.ledger.rows[-1]
    assert row.detail["unexpected"] is True
    assert "RuntimeError: adapter bug" in row.detail["error"]


@pytest.mark.parametrize(
    ("change", "why"),
    [("ban", "status BANNED"), ("disable", "disabled"), ("delete", "deleted")],
)
async def test_an_instance_leaving_our_care_is_dismissed_not_recovered(
    change: str, why: str
) -> None:
    rig = make_rig()
    rig.store.add("a")
    rig.clock.advance(STALE)
    await rig.cycle()
    if change == "ban":
        rig.store.set_status("a", "BANNED")
    elif change == "disable":
        rig.store.set_enabled("a", False)
    else:
        del rig.store.instances["a"]
    await rig.cycle()
    last = rig.ledger.rows[-1]
    assert (last.action, last.outcome) == (AuditAction.DISMISSED, Outcome.OK)
    assert last.detail["why"] == why
    assert await rig.ledger.load_open() == {}
    closed = await rig.ledger.last_closed(["a"])
    assert closed["a"].state is IncidentState.DISMISSED


# ------------------------------------------------------------------- mass freeze


def record_ledger_calls(rig: Rig) -> list[tuple[str, int]]:
    """(open|claim|close|exhaust, batch size) of each batch write, in order."""
    calls: list[tuple[str, int]] = []
    ledger = rig.ledger
    for kind, name in (
        ("open", "open_incidents"),
        ("claim", "begin_actions"),
        ("close", "close_all"),
        ("exhaust", "exhaust_all"),
    ):
        write = getattr(ledger, name)

        async def recorded(batch, now, *more, kind=kind, write=write):  # type: ignore[no-untyped-def]
            calls.append((kind, len(batch)))
            return await write(batch, now, *more)

        setattr(ledger, name, recorded)
    return calls


async def test_a_mass_freeze_starts_calls_after_the_first_batch_is_open_not_all() -> None:
    """The first batch is as many as can be acted on at once (16 by default): their calls
    start while the rest are opened, in batches of 100."""
    rig = make_rig()
    for n in range(150):
        rig.store.add(f"i{n:03d}")
    rig.clock.advance(STALE)
    calls = record_ledger_calls(rig)
    report = await rig.cycle()
    assert calls == [(kind, n) for n in (16, 100, 34) for kind in ("open", "claim")]
    assert sorted(rig.calls(API)) == [f"i{n:03d}" for n in range(150)]
    assert report.opened == 150


async def test_a_cycle_opens_and_starts_its_budget_the_least_overdue_first_and_the_rest_next() -> (
    None
):
    """A storm of 250 with a budget of 200: the cycle stays short (detection goes on), an
    instance that froze during the storm is opened in the first cycle, and the backlog in
    the next, which the report asks for at once."""
    rig = make_rig(budget=200)
    storm = [f"i{n:03d}" for n in range(250)]
    for instance_id in storm:
        rig.store.add(instance_id)
    rig.clock.advance(10)
    rig.store.add("late")  # beats 10 s after the storm: 10 s less overdue
    rig.clock.advance(STALE)
    calls = record_ledger_calls(rig)
    first = await rig.cycle()
    assert calls == [(kind, n) for n in (16, 100, 84) for kind in ("open", "claim")]
    assert (first.opened, first.acted, first.backlog) == (200, 200, 51)
    assert "late" in rig.calls(API)  # the least overdue goes first
    assert sorted(rig.calls(API)) == sorted(["late", *storm[:199]])  # then the storm in order
    calls.clear()
    second = await rig.cycle()
    assert calls == [("open", 16), ("claim", 16), ("open", 35), ("claim", 35)]
    assert (second.opened, second.acted, second.backlog) == (51, 51, 0)
    assert sorted(rig.calls(API)) == sorted(["late", *storm])


async def test_a_backlog_is_judged_once_and_a_later_freeze_still_goes_first() -> None:
    """The backlog's findings are reused while it waits (the SQL store does not read and
    judge those rows again), their ages those of the scan that judged them; an instance
    that crossed its threshold since is still the least overdue and opened first."""
    rig = make_rig(budget=200, knowing=True)
    assert isinstance(rig.store, KnowingStore)
    storm = [f"i{n:03d}" for n in range(450)]
    for instance_id in storm:
        rig.store.add(instance_id)
    rig.clock.advance(5)
    rig.store.add("late")  # crosses its threshold 5 s after the storm
    rig.clock.advance(STALE - 5)  # the storm is 1 s past its threshold
    first = await rig.cycle()
    assert (first.opened, first.backlog) == (200, 250)
    # "late" is 6 s past its threshold, the storm 11 s; its reused findings say 1 s.
    rig.clock.advance(10)
    second = await rig.cycle()
    assert rig.store.told[-1] >= set(storm[200:])  # the backlog is not judged again
    assert "late" in rig.calls(API)  # opened before the storm's older backlog
    assert (second.opened, second.backlog) == (200, 51)
    assert sorted(rig.calls(API)) == sorted(["late", *storm[:399]])


async def test_a_backlog_is_audited_once_when_it_starts_and_once_when_it_clears() -> None:
    rig = make_rig(budget=200, fleet=True, safety=SafetyRules(brake_min_unhealthy=10_000))
    for n in range(450):
        rig.store.add(f"i{n:03d}")
    rig.clock.advance(STALE)
    backlogs = [(await rig.cycle()).backlog for _ in range(4)]
    assert backlogs == [250, 50, 0, 0]
    (started,) = rig.rows(FLEET, AuditAction.BACKLOG)
    assert started.detail == {"left": 250, "budget": 200}
    assert len(rig.rows(FLEET, AuditAction.BACKLOG_CLEARED)) == 1
    assert rig.fleet is not None
    assert (await rig.fleet.backlog() or {}).get("present") is False


async def frozen_and_open(rig: Rig, n: int) -> list[str]:
    """`n` instances freeze at once; cycles run until every one has its incident (and
    its first attempt), however many the budget takes."""
    ids = [f"i{k:03d}" for k in range(n)]
    for instance_id in ids:
        rig.store.add(instance_id)
    rig.clock.advance(STALE)
    while (await rig.cycle()).backlog:
        pass
    return ids


async def test_a_cycle_starts_at_most_its_budget_of_due_actions_and_the_rest_next() -> None:
    rig = make_rig(budget=200)
    ids = await frozen_and_open(rig, 250)
    rig.clock.advance(30)  # attempt 2 of all 250 comes due at once
    first = await rig.cycle()
    assert (first.acted, first.backlog) == (200, 50)
    second = await rig.cycle()
    assert (second.acted, second.backlog) == (50, 0)
    assert all(rig.calls(API).count(i) == 2 for i in ids)


async def test_a_mass_recovery_closes_incidents_in_batches() -> None:
    rig = make_rig(budget=200)
    ids = await frozen_and_open(rig, 250)
    for instance_id in ids:
        rig.store.beat(instance_id)
    calls = record_ledger_calls(rig)
    report = await rig.cycle()
    assert calls == [("close", 100), ("close", 100), ("close", 50)]
    assert report.resolved == 250
    assert await rig.ledger.load_open() == {}
    assert all(rig.trail(i)[-1] == ("recovered", "ok", 1) for i in ids)


async def test_instances_spending_their_last_attempt_together_are_exhausted_in_batches() -> None:
    one_try = EscalationRules(ladder=(LadderStep(API, 1, 30.0),), max_attempts=1)
    rig = make_rig(rules=one_try)
    ids = [f"i{n:03d}" for n in range(150)]
    for instance_id in ids:
        rig.store.add(instance_id)
    rig.clock.advance(STALE)
    await rig.cycle()
    rig.clock.advance(30)
    calls = record_ledger_calls(rig)
    report = await rig.cycle()
    assert calls == [("exhaust", 100), ("exhaust", 50)]
    assert report.exhausted == 150
    assert all(rig.trail(i)[-1] == ("exhausted", "ok", 1) for i in ids)
    assert {i.state for i in (await rig.ledger.load_open()).values()} == {IncidentState.EXHAUSTED}


async def test_a_shared_restart_waits_until_every_member_is_open_and_runs_once() -> None:
    restart_first = EscalationRules(ladder=(LadderStep(PROC, None, 120.0),))
    rig = make_rig(rules=restart_first, safety=SafetyRules(brake_min_unhealthy=10_000))
    for n in range(150):
        rig.store.add(f"i{n:03d}", process="p1")
    rig.clock.advance(STALE)
    calls = record_ledger_calls(rig)
    await rig.cycle()
    assert calls == [("open", 16), ("open", 100), ("open", 34), ("claim", 150)]
    assert rig.recoveries[PROC].calls == [Target("i000", "p1")]  # one restart for all 150


async def test_no_final_give_up_the_last_rung_is_tried_again_every_exhausted_retry() -> None:
    one_try = EscalationRules(
        ladder=(LadderStep(API, 1, 30.0),), max_attempts=1, exhausted_retry=3600.0
    )
    rig = make_rig(rules=one_try)
    rig.store.add("a")
    rig.clock.advance(STALE)
    await rig.cycle()  # attempt 1
    rig.clock.advance(30)
    await rig.cycle()  # exhausted
    rig.clock.advance(3599)
    assert (await rig.cycle()).actions == []
    rig.clock.advance(1)
    retried = await rig.cycle()
    assert retried.actions == [("a", API, 2)]
    assert rig.calls(API) == ["a", "a"]
    assert rig.state("a") is IncidentState.EXHAUSTED  # still: it is a retry, not a ladder
    started = rig.rows("a", AuditAction.API_RESTART)[-2]
    assert started.detail.get("exhausted_retry") is True
    (said,) = rig.rows("a", AuditAction.EXHAUSTED_RETRY)  # audited (and alerted) once a try
    assert (said.attempt, said.detail["rung"]) == (2, "api_restart")
    outcome = rig.rows("a", AuditAction.API_RESTART)[-1]
    assert started.id < said.id < outcome.id  # said before the call goes out
    rig.store.beat("a")
    rig.clock.advance(5)
    await rig.cycle()
    assert rig.state("a") is IncidentState.RECOVERED  # a recovery closes it as usual


async def test_a_fleet_pause_holds_every_instance_it_covers_also_one_that_appears_later() -> None:
    rig = make_rig()
    rig.store.add("wa-1", process="app")
    rig.store.add("wa-2", process="other")
    rig.store.add("db-1", process="app")
    until = rig.clock.now + timedelta(hours=1)
    await rig.ledger.pause_all(
        [Pause("*", until, "deploy", "bob", Selector(SelectorKind.PROCESS, "app"))],
        rig.clock.now,
    )
    await rig.ledger.pause_all(
        [Pause("*", until, "migration", "bob", Selector(SelectorKind.MATCH, "wa-*"))],
        rig.clock.now,
    )
    rig.clock.advance(10)
    rig.store.add("wa-9", process="new")  # appears while the pause lasts
    rig.store.add("xx-1", process="new")
    rig.clock.advance(STALE)
    report = await rig.cycle()
    assert report.opened == 5  # detected and audited, as paused ones are
    assert report.actions == [("xx-1", API, 1)]  # the only one no pause covers
    await rig.ledger.resume_fleet(Selector(SelectorKind.MATCH, "wa-*"), "bob")
    rig.clock.advance(31)
    acted = {(a[0], a[2]) for a in (await rig.cycle()).actions}
    assert acted == {("wa-2", 1), ("wa-9", 1), ("xx-1", 2)}  # wa-1, db-1: still by process
