"""The top rung and the processes it restarts, on the shipped fakes with a fake clock:
one restart per process within its settle (a second asker shares it), every co-hosted
incident told of a restart (ours or anyone's), and the blast radius held until approved.

The fake process backend gives each process a PID that each restart bumps; a test bumps
one itself to play a restart made by someone else."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from structlog.testing import capture_logs

from tests.unit.test_engine import API, PROC, STALE, Rig, make_rig
from watchdog.core.errors import TransientRecoveryError
from watchdog.core.model import AuditAction, Generation, Incident, Outcome
from watchdog.core.policy import EscalationRules, LadderStep
from watchdog.core.safety import SafetyRules, blast_radius_holds

SETTLE = 60.0
PROCESS_ONLY = EscalationRules(
    ladder=(LadderStep(PROC, None, SETTLE),), max_attempts=50, backoff_factor=1.0, jitter=0.0
)
API_THEN_PROCESS = EscalationRules(
    ladder=(LadderStep(API, 1, 30.0), LadderStep(PROC, None, SETTLE)),
    max_attempts=50,
    backoff_factor=1.0,
    jitter=0.0,
)
NO_BRAKE = SafetyRules(brake_min_unhealthy=100, collateral_fraction=1.0)


def incident(rig: Rig, instance_id: str) -> Incident:
    return [i for i in rig.ledger.incidents.values() if i.instance_id == instance_id][-1]


def outcomes(
    rig: Rig, instance_id: str, action: AuditAction
) -> list[tuple[str, dict[str, object]]]:
    return [
        (str(r.outcome), dict(r.detail))
        for r in rig.rows(instance_id, action)
        if r.outcome is not Outcome.STARTED
    ]


# ------------------------------------------------------------------------------ pure


def test_the_blast_radius_holds_when_more_than_the_share_is_healthy() -> None:
    half = SafetyRules(collateral_fraction=0.5)
    assert blast_radius_holds(2, 3, half)  # one frozen of three: two would go down with it
    assert not blast_radius_holds(1, 2, half)  # exactly half is not more than half
    assert not blast_radius_holds(0, 1, half)  # alone in its process
    assert not blast_radius_holds(0, 0, half)
    assert not blast_radius_holds(499, 500, SafetyRules(collateral_fraction=1.0))  # off


# ------------------------------------------------------------------------- cooldown


async def test_a_second_instance_due_within_the_settle_shares_the_restart() -> None:
    rig = make_rig(rules=PROCESS_ONLY, safety=NO_BRAKE, hosts=True)
    rig.store.add("a", process="p1")
    rig.store.add("b", process="p1")
    rig.clock.advance(40)
    rig.store.beat("b")
    rig.clock.advance(STALE - 40)
    await rig.cycle()  # a is stale: p1 restarted for it
    rig.clock.advance(40)  # b goes stale 40 s later, in another cycle
    report = await rig.cycle()
    assert rig.calls(PROC) == ["a"]  # one restart of p1, not two
    assert report.actions == [("b", PROC, 1)]  # b's attempt is spent, as shared
    intent = [r for r in rig.rows("b", AuditAction.PROCESS_RESTART) if r.outcome == "started"]
    assert intent[0].detail["shared"] is True
    [(outcome, detail)] = outcomes(rig, "b", AuditAction.PROCESS_RESTART)
    assert outcome == "skipped"
    assert detail["reason"] == "shared"
    assert detail["process"] == "p1"
    assert detail["by"] == "watchdog"
    assert fleet_restarts(rig) == 1  # a shared attempt spends no restart budget


def fleet_restarts(rig: Rig) -> int:
    assert rig.fleet is not None
    return len(rig.fleet.restarts)


async def test_after_the_settle_the_process_may_be_restarted_again() -> None:
    rig = make_rig(rules=PROCESS_ONLY, safety=NO_BRAKE, hosts=True)
    rig.store.add("a", process="p1")
    rig.clock.advance(STALE)
    await rig.cycle()
    rig.clock.advance(SETTLE + 1)
    await rig.cycle()
    assert rig.calls(PROC) == ["a", "a"]


# ------------------------------------------------------------------ host restarted


async def test_a_restart_tells_every_other_open_incident_it_hosts_and_defers_it() -> None:
    rig = make_rig(rules=API_THEN_PROCESS, safety=NO_BRAKE, hosts=True)
    rig.store.add("a", process="p1")
    rig.store.add("b", process="p1")
    rig.store.add("c", process="p2")
    rig.clock.advance(30)
    rig.store.beat("b")
    rig.clock.advance(STALE - 30)
    rig.store.beat("c")
    await rig.cycle()  # a: api_restart
    rig.clock.advance(30)
    rig.store.beat("c")
    report = await rig.cycle()  # a: process_restart of p1; b: opened, api_restart
    assert sorted(report.actions) == [("a", PROC, 2), ("b", API, 1)]
    restart_at = rig.clock.now
    [told] = rig.rows("b", AuditAction.HOST_RESTARTED)
    assert told.detail == {
        "process": "p1",
        "old_pid": 1000,
        "new_pid": 1001,
        "by": "watchdog",
        "incident": incident(rig, "a").id,
    }
    assert rig.rows("a", AuditAction.HOST_RESTARTED) == []  # its own outcome row says it
    assert rig.rows("c", AuditAction.HOST_RESTARTED) == []  # another process
    # b's next attempt waits the process restart's settle, though its own api_restart
    # (finished after the restart) asked for less.
    assert incident(rig, "b").next_action_at == restart_at + timedelta(seconds=SETTLE)
    rig.clock.advance(31)
    rig.store.beat("c")
    assert ("b", PROC, 2) not in (await rig.cycle()).actions


async def test_a_restart_made_by_someone_else_is_audited_external_on_each_incident() -> None:
    rig = make_rig(rules=API_THEN_PROCESS, safety=NO_BRAKE, hosts=True)
    rig.store.add("a", process="p1")
    rig.store.add("b", process="p1")
    rig.clock.advance(STALE)
    await rig.cycle()  # both stale: api_restart each
    assert await rig.engine.watch_hosts() == 0  # p1 first seen: its generation noted
    assert rig.rows("a", AuditAction.HOST_RESTARTED) == []
    rig.recoveries[PROC].pids["p1"] = 4242  # `supervisorctl restart p1`
    rig.clock.advance(5)
    assert await rig.engine.watch_hosts() == 1
    for instance in ("a", "b"):
        [told] = rig.rows(instance, AuditAction.HOST_RESTARTED)
        assert told.detail == {"process": "p1", "old_pid": 1000, "new_pid": 4242, "by": "external"}
        deferred = rig.clock.now + timedelta(seconds=SETTLE)
        assert incident(rig, instance).next_action_at == deferred
    assert await rig.engine.watch_hosts() == 0  # seen once, told once
    # Within the settle of that restart, the rung shares it instead of restarting again.
    rig.clock.advance(SETTLE - 10)
    a = incident(rig, "a")  # its next attempt comes due before that settle is over
    rig.ledger.incidents[a.id] = replace(a, next_action_at=rig.clock.now)
    await rig.cycle()
    assert rig.calls(PROC) == []
    [(outcome, detail)] = outcomes(rig, "a", AuditAction.PROCESS_RESTART)
    assert (outcome, detail["reason"], detail["by"]) == ("skipped", "shared", "external")


# ------------------------------------------------------------------- blast radius


def blast_rig(fraction: float = 0.5) -> Rig:
    """p1 hosts a, b and c; a is frozen, b and c healthy."""
    safety = SafetyRules(brake_min_unhealthy=100, collateral_fraction=fraction)
    rig = make_rig(rules=PROCESS_ONLY, safety=safety, hosts=True)
    for name in ("a", "b", "c"):
        rig.store.add(name, process="p1")
    advance(rig, STALE)
    return rig


def advance(rig: Rig, seconds: float) -> None:
    rig.clock.advance(seconds)
    rig.store.beat("b")
    rig.store.beat("c")


async def test_a_restart_that_takes_down_more_healthy_than_allowed_is_held() -> None:
    rig = blast_rig()
    report = await rig.cycle()
    assert report.actions == []
    assert rig.calls(PROC) == []
    [held] = rig.rows("a", AuditAction.HELD)
    assert held.outcome is Outcome.SKIPPED
    assert held.attempt == 1
    assert held.detail == {
        "reason": "blast_radius",
        "process": "p1",
        "healthy": 2,
        "monitored": 3,
        "collateral_fraction": 0.5,
    }
    assert incident(rig, "a").held == held.detail
    for _ in range(3):  # weighed every cycle, audited (and alerted) once
        advance(rig, SETTLE + 1)
        await rig.cycle()
    assert len(rig.rows("a", AuditAction.HELD)) == 1
    assert rig.calls(PROC) == []


async def test_an_approval_lets_exactly_one_held_restart_through() -> None:
    rig = blast_rig()
    await rig.cycle()
    approved = await rig.ledger.approve("a", "alice")
    assert approved is not None
    assert approved.approved_by == "alice"
    [row] = rig.rows("a", AuditAction.APPROVED)
    assert row.actor == "alice"
    assert row.detail["held"]["reason"] == "blast_radius"
    advance(rig, 1)
    report = await rig.cycle()
    assert report.actions == [("a", PROC, 1)]
    assert rig.calls(PROC) == ["a"]
    intent = [r for r in rig.rows("a", AuditAction.PROCESS_RESTART) if r.outcome == "started"]
    assert intent[0].detail["approved_by"] == "alice"
    assert incident(rig, "a").approved_by is None  # spent
    assert incident(rig, "a").held is None
    advance(rig, SETTLE + 1)
    await rig.cycle()  # still frozen: the next restart is held again
    assert rig.calls(PROC) == ["a"]
    assert len(rig.rows("a", AuditAction.HELD)) == 2


async def test_approving_an_instance_without_an_open_incident_changes_nothing() -> None:
    rig = blast_rig()
    assert await rig.ledger.approve("b", "alice") is None
    assert rig.rows("b", AuditAction.APPROVED) == []


async def test_the_guard_off_or_a_radius_within_the_share_lets_the_restart_go() -> None:
    off = blast_rig(fraction=1.0)
    await off.cycle()
    assert off.calls(PROC) == ["a"]
    both = blast_rig()
    both.clock.advance(STALE)  # b and c freeze too: nobody healthy is left to take down
    both.store.beat("c")
    await both.cycle()
    assert both.calls(PROC) == ["a"]  # a and b share one restart; c alone is healthy
    assert both.rows("a", AuditAction.HELD) == []


async def test_a_process_whose_generation_cannot_be_read_is_said_once_then_again_when_back() -> (
    None
):
    rig = make_rig(rules=API_THEN_PROCESS, safety=NO_BRAKE, hosts=True)
    rig.store.add("a", process="p1")
    rig.clock.advance(STALE)
    await rig.cycle()
    rung = rig.recoveries[PROC]
    real = rung.generation

    async def unreachable(name: str) -> Generation | None:
        raise TransientRecoveryError("supervisord unreachable (test)")

    rung.generation = unreachable  # type: ignore[method-assign]
    with capture_logs() as captured:
        for _ in range(3):
            assert await rig.engine.watch_hosts() == 0
        rung.generation = real  # type: ignore[method-assign]
        assert await rig.engine.watch_hosts() == 0
    events = [(e["event"], e.get("process")) for e in captured if "host_" in e["event"]]
    assert events == [("host_unreadable", "p1"), ("host_readable", "p1")]
