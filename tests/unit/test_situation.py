"""What `status` and `explain` say will happen next, and which guard holds it: pure, on a
fake clock. Never `due` for something that will not run."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from watchdog.core.model import Action, Incident, IncidentState, Pause, Reason, Verdict
from watchdog.core.policy import EscalationRules
from watchdog.core.situation import GUARD_NAMES, Facts, situate, when

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
RULES = EscalationRules()


def incident(
    attempt: int = 1, state: IncidentState = IncidentState.OPEN, due: float = 0
) -> Incident:
    return Incident(
        7,
        "a",
        Reason.STALE_HEARTBEAT,
        state,
        attempt,
        NOW - timedelta(minutes=5),
        NOW + timedelta(seconds=due),
    )


def facts(**changes: object) -> Facts:
    base = Facts(
        now=NOW,
        verdict=Verdict.UNHEALTHY,
        why="heartbeat age 143.2 s > stale_after 90 s",
        incident=incident(),
        pause=None,
        leader="n1",
        leader_detail="n1 leads (last good cycle 1s ago)",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_every_guard_is_named_and_nothing_holds_a_due_action() -> None:
    situation = situate(facts(), RULES)
    assert [g.name for g in situation.guards] == list(GUARD_NAMES)
    assert situation.blocked_by == []
    assert (situation.next_action, situation.next_action_at) == ("api_restart", NOW)
    assert when(situation, NOW) == "due"
    later = situate(facts(incident=incident(due=4)), RULES)
    assert when(later, NOW) == "in 4s (12:00:04Z)"


@pytest.mark.parametrize(
    ("changes", "blocked", "shown"),
    [
        (
            {"leader": None, "leader_detail": "no daemon is acting"},
            ["no_leader"],
            "held: no daemon acting",
        ),
        ({"grace_until": NOW + timedelta(seconds=31)}, ["grace"], "held: grace until 12:00:31Z"),
        (
            {"pause": Pause("a", NOW + timedelta(hours=1), "deploy", "alice")},
            ["pause"],
            "held: paused until 2026-11-29 13:00:00Z by alice (deploy)",
        ),
        ({"in_flight": True}, ["in_flight"], "running now"),
        (  # exhausted with retries off (or from before they existed): nothing comes
            {"incident": replace(incident(10, IncidentState.EXHAUSTED), next_action_at=None)},
            ["exhausted"],
            "exhausted",
        ),
        (
            {"incident": incident(5, IncidentState.SUPPRESSED, due=600)},
            ["budget"],
            "held: restart budget spent until 2026-11-29 12:10:00Z",
        ),
        (
            {"verdict": Verdict.UNJUDGEABLE, "why": "last_heartbeat_at: not a time"},
            ["readable"],
            "held: unjudgeable",
        ),
    ],
)
def test_each_guard_names_itself_when_it_holds(
    changes: dict[str, object], blocked: list[str], shown: str
) -> None:
    situation = situate(facts(**changes), RULES)
    assert situation.blocked_by == blocked
    assert when(situation, NOW) == shown


def test_the_brake_holds_only_the_rungs_it_brakes() -> None:
    gentle = situate(facts(brake=True), RULES)  # attempt 2: api_restart
    assert gentle.blocked_by == []
    flag = situate(facts(brake=True, incident=incident(2)), RULES)  # attempt 3: db_flag
    assert flag.blocked_by == ["brake"]
    assert when(flag, NOW) == "held: brake"


def test_an_open_breaker_means_the_attempt_is_spent_without_a_call() -> None:
    opened = {Action.DB_FLAG: NOW + timedelta(seconds=60)}
    flag = situate(facts(incident=incident(2), open_breakers=opened), RULES)
    assert flag.blocked_by == ["breaker"]
    assert when(flag, NOW) == "skipped: breaker open"
    assert situate(facts(open_breakers=opened), RULES).blocked_by == []  # api_restart's closed


def test_what_happens_to_an_incident_whose_instance_is_healthy_or_gone() -> None:
    healthy = situate(facts(verdict=Verdict.HEALTHY, why="heartbeat age 2 s"), RULES)
    assert healthy.next_action == "close (recovered)"
    gone = situate(facts(verdict=Verdict.DELETED, why="the row is gone"), RULES)
    assert gone.next_action == "close (dismissed)"


def test_an_unhealthy_instance_without_an_incident_is_detected_next() -> None:
    fresh = situate(facts(incident=None), RULES)
    assert fresh.next_action == "detect, then api_restart"
    assert when(fresh, NOW) == "due"
    nothing = situate(facts(incident=None, verdict=Verdict.HEALTHY), RULES)
    assert (nothing.next_action, when(nothing, NOW)) == (None, "-")


@pytest.mark.parametrize("verdict", [Verdict.HEALTHY, Verdict.DISABLED, Verdict.DELETED])
def test_with_nothing_to_do_no_guard_is_said_to_hold_it(verdict: Verdict) -> None:
    nothing = facts(verdict=verdict, incident=None, leader=None, leader_detail="no daemon")
    situation = situate(nothing, RULES)
    assert situation.next_action is None
    assert situation.blocked_by == []  # no daemon acting holds nothing that is not due
    assert when(situation, NOW) == "-"
    assert not {g.name: g for g in situation.guards}["no_leader"].ok  # still shown, as a fact
    spent = replace(incident(11, IncidentState.EXHAUSTED), next_action_at=None)
    exhausted = situate(facts(incident=spent), RULES)
    assert exhausted.blocked_by == ["exhausted"]  # why nothing is done is still said


def test_an_exhausted_incident_says_when_its_last_rung_comes_again() -> None:
    later = replace(incident(10, IncidentState.EXHAUSTED), next_action_at=NOW + timedelta(hours=1))
    situation = situate(facts(incident=later), RULES)
    assert situation.next_action == "retry process_restart"
    assert situation.blocked_by == []
    assert when(situation, NOW) == "exhausted; retry in 1h00m (13:00:00Z)"


HELD = {"reason": "blast_radius", "process": "p1", "healthy": 2, "monitored": 3}


def test_a_process_restart_held_by_its_blast_radius_says_so_until_approved() -> None:
    on_top = incident(attempt=5)  # attempt 6 is the default ladder's process_restart
    held = situate(facts(incident=replace(on_top, held=HELD)), RULES)
    assert held.next_action == "process_restart"
    assert held.blocked_by == ["blast_radius"]
    shown = when(held, NOW)
    assert shown.startswith("held: blast radius: 2 of 3 instances of p1 healthy")
    assert "watchdogctl approve a" in shown
    approved = situate(facts(incident=replace(on_top, held=HELD, approved_by="alice")), RULES)
    assert approved.blocked_by == []
    guard = {g.name: g for g in approved.guards}["blast_radius"]
    assert guard.detail == "approved by alice: the next process restart goes through"
    # A hold on the top rung says nothing while a lower rung comes next.
    lower = situate(facts(incident=replace(incident(attempt=1), held=HELD)), RULES)
    assert lower.blocked_by == []


BACKLOG = {"present": True, "since": NOW.isoformat(), "left": 9_500, "budget": 500}


def test_a_due_step_left_by_the_cycle_budget_names_it() -> None:
    held = situate(facts(backlog=BACKLOG), RULES)
    assert held.blocked_by == ["cycle_budget"]
    assert when(held, NOW).startswith("held: cycle budget: since 12:00:00Z")
    detected = situate(facts(incident=None, backlog=BACKLOG), RULES)  # still to be opened
    assert detected.blocked_by == ["cycle_budget"]
    for calm in (
        facts(backlog={"present": False}),  # the backlog cleared
        facts(backlog=BACKLOG, incident=incident(due=30)),  # not due: not the budget's
        facts(backlog=BACKLOG, in_flight=True),  # started: running, not waiting
        facts(backlog=BACKLOG, verdict=Verdict.HEALTHY),  # closings are not budgeted
    ):
        assert "cycle_budget" not in situate(calm, RULES).blocked_by
