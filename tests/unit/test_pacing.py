"""Pacing a storm of recoveries (`[api] rate`, `[process] rate`): every attempt is claimed
and its intent written at once, then the calls go out no faster than the backend's pace;
the queued ones say so in their intent, in the cycle report and in `status`; a shutdown
sends none of those still queued. On the shipped fakes; the waits are recorded, and they
end when the test says."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from tests.unit.test_engine import API, STALE, Rig, make_rig
from watchdog.config import Settings
from watchdog.core.model import Action, AuditAction, Incident, IncidentState, Reason, Verdict
from watchdog.core.pacing import TokenBucket
from watchdog.core.policy import EscalationRules, LadderStep
from watchdog.core.safety import SafetyRules
from watchdog.core.situation import Facts, situate, when
from watchdog.wiring import pacers

API_ONLY = EscalationRules(ladder=(LadderStep(API, None, 30.0),), jitter=0.0)
NO_BRAKE = SafetyRules(brake_min_unhealthy=1000)


class Gate:
    """The dispatcher's sleep: records each wait and returns when the gate opens."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.open = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        await self.open.wait()


def storm(gate: Gate, n: int = 6) -> Rig:
    rig = make_rig(
        rules=API_ONLY,
        safety=NO_BRAKE,
        pacers={API: TokenBucket(rate=2.0, burst=2)},
        sleep=gate.sleep,
    )
    for i in range(n):
        rig.store.add(f"i{i}")
    rig.clock.advance(STALE)
    return rig


async def settle() -> None:
    for _ in range(20):  # let the launched calls reach their waits
        await asyncio.sleep(0)


async def test_a_storm_is_claimed_at_once_and_sent_at_the_backends_pace() -> None:
    gate = Gate()
    rig = storm(gate)
    report = await rig.engine.run_cycle()
    assert len(report.actions) == 6  # every attempt claimed, its intent on record
    intents = [r for r in rig.ledger.rows if r.action is AuditAction.API_RESTART]
    queued = [r.detail.get("queued_until") for r in intents]
    assert queued[:2] == [None, None]  # the burst goes out at once
    later = [rig.clock.now + timedelta(seconds=s) for s in (0.5, 1.0, 1.5, 2.0)]
    assert queued[2:] == [t.isoformat() for t in later]
    await settle()
    assert sorted(gate.waits) == [0.5, 1.0, 1.5, 2.0]
    assert rig.engine.queued == {"api_restart": 4}
    assert sorted(rig.calls(API)) == ["i0", "i1"]  # the rest wait for their turn
    gate.open.set()
    assert await rig.engine.drain(5.0)
    assert sorted(rig.calls(API)) == [f"i{i}" for i in range(6)]
    assert rig.engine.queued == {}


async def test_the_cycle_report_counts_what_waits_for_its_pace() -> None:
    gate = Gate()
    rig = storm(gate)
    await rig.engine.run_cycle()
    await settle()
    rig.clock.advance(1)
    report = await rig.engine.run_cycle()  # all six busy: nothing new, four still queued
    assert report.actions == []
    assert report.queued == {"api_restart": 4}
    gate.open.set()
    assert await rig.engine.drain(5.0)


async def test_a_shutdown_sends_none_of_the_calls_still_queued() -> None:
    gate = Gate()
    rig = storm(gate)
    await rig.engine.run_cycle()
    await settle()
    rig.engine.stop_acting()
    assert await rig.engine.drain(5.0)  # the waits end with the shutdown, not the gate
    assert sorted(rig.calls(API)) == ["i0", "i1"]
    skipped = [
        r.instance_id
        for r in rig.ledger.rows
        if r.action is AuditAction.API_RESTART and r.outcome == "skipped"
    ]
    assert sorted(skipped) == ["i2", "i3", "i4", "i5"]
    assert {r.detail["reason"] for r in rig.ledger.rows if r.outcome == "skipped"} == {
        "shutting_down"
    }


def test_status_says_queued_and_when_not_running() -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    incident = Incident(1, "i3", Reason.STALE_HEARTBEAT, IncidentState.OPEN, 1, now, now)
    facts = Facts(
        now=now,
        verdict=Verdict.UNHEALTHY,
        why="heartbeat age 95 s > stale_after 90 s",
        incident=incident,
        pause=None,
        leader="n1",
        leader_detail="n1 leads",
        in_flight=True,
        queued_until=now + timedelta(seconds=4),
    )
    situation = situate(facts, API_ONLY)
    assert situation.blocked_by == ["in_flight"]
    assert when(situation, now) == "queued, in 4s (12:00:04Z)"
    guard = {g.name: g for g in situation.guards}["in_flight"]
    assert guard.detail.startswith("queued by its backend's pace")
    assert when(situate(replace(facts, queued_until=None), API_ONLY), now) == "running now"


def test_rates_in_the_configuration_make_the_paces() -> None:
    settings = Settings.model_validate({"api": {"rate": 2.5}, "process": {"rate": 0.1}})
    paces = pacers(settings)
    assert paces[API].rate == 2.5
    assert paces[API].burst == 3  # a second's worth, rounded up
    assert set(paces) == {API, Action.PROCESS_RESTART}
    assert paces[Action.PROCESS_RESTART].burst == 1
    assert pacers(Settings()) == {}  # 0: unlimited, the default
