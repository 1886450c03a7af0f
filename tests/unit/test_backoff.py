"""The escalation ladder (`step_for_attempt`) and the wait between attempts (`backoff`).

Expected values come from the product spec, written out here independently of the
policy's own tables: attempts 1–2 api_restart, 3–5 db_flag, 6–10 process_restart;
wait = settle × 1.5^(attempt−1), capped at 300 s but never below the step's settle,
plus up to 20 % jitter.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watchdog.core.model import Action
from watchdog.core.pacing import TokenBucket
from watchdog.core.policy import (
    EscalationRules,
    LadderStep,
    backoff,
    exponential,
    step_for_attempt,
)

RULES = EscalationRules()

SPEC_LADDER = {
    **dict.fromkeys((1, 2), Action.API_RESTART),
    **dict.fromkeys((3, 4, 5), Action.DB_FLAG),
    **dict.fromkeys(range(6, 11), Action.PROCESS_RESTART),
}
SPEC_SETTLE = {Action.API_RESTART: 30.0, Action.DB_FLAG: 30.0, Action.PROCESS_RESTART: 120.0}

attempts = st.integers(1, RULES.max_attempts)
jitters = st.floats(0.0, 1.0, exclude_max=True)


def step(attempt: int) -> LadderStep:
    found = step_for_attempt(RULES, attempt)
    assert found is not None, f"attempt {attempt} has no ladder step"
    return found


# --------------------------------------------------------------------------- ladder


@pytest.mark.parametrize(("attempt", "action"), sorted(SPEC_LADDER.items()))
def test_default_ladder_gives_each_attempt_its_spec_action(attempt: int, action: Action) -> None:
    assert step(attempt).action is action


@pytest.mark.parametrize("attempt", [-1, 0, 11, 12, 100])
def test_attempts_outside_one_to_max_have_no_step(attempt: int) -> None:
    assert step_for_attempt(RULES, attempt) is None


def test_last_step_takes_every_attempt_up_to_a_custom_max() -> None:
    rules = EscalationRules(max_attempts=14)

    assert [s.action for a in range(6, 15) if (s := step_for_attempt(rules, a))] == [
        Action.PROCESS_RESTART
    ] * 9
    assert step_for_attempt(rules, 15) is None


def test_a_bounded_last_step_runs_out_before_max_attempts() -> None:
    rules = EscalationRules(ladder=(LadderStep(Action.API_RESTART, 2, 30.0),), max_attempts=10)

    assert step_for_attempt(rules, 2) is not None
    assert step_for_attempt(rules, 3) is None


def test_ladder_steps_carry_their_spec_settle_times() -> None:
    assert {a: step(a).settle for a in SPEC_LADDER} == {
        a: SPEC_SETTLE[action] for a, action in SPEC_LADDER.items()
    }


# -------------------------------------------------------------------------- backoff


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [
        (1, 30.0),  # api_restart: 30 × 1.5^0
        (2, 45.0),  # 30 × 1.5
        (3, 67.5),  # db_flag: 30 × 1.5^2
        (4, 101.25),
        (5, 151.875),
        (6, 300.0),  # process_restart: 120 × 1.5^5 = 911.25, capped
        (10, 300.0),
    ],
)
def test_backoff_without_jitter_follows_settle_times_factor_power(
    attempt: int, expected: float
) -> None:
    assert backoff(RULES, step(attempt), attempt, 0.0) == pytest.approx(expected)


def test_backoff_adds_jitter_as_a_fraction_of_the_delay() -> None:
    assert backoff(RULES, step(1), 1, 0.5) == pytest.approx(30.0 * 1.1)
    assert backoff(RULES, step(6), 6, 0.999) == pytest.approx(300.0 * (1 + 0.2 * 0.999))


def test_backoff_cap_never_cuts_below_the_steps_own_settle() -> None:
    slow = LadderStep(Action.PROCESS_RESTART, None, 400.0)

    assert backoff(RULES, slow, 1, 0.0) == pytest.approx(400.0)
    assert backoff(RULES, slow, 7, 0.0) == pytest.approx(400.0)


def spec_backoff(attempt: int, jitter: float) -> float:
    settle = SPEC_SETTLE[SPEC_LADDER[attempt]]
    base = min(settle * 1.5 ** (attempt - 1), max(300.0, settle))
    return base * (1 + 0.2 * jitter)


@settings(max_examples=200, deadline=None)
@given(attempt=attempts, jitter=jitters)
def test_backoff_matches_the_spec_formula(attempt: int, jitter: float) -> None:
    assert backoff(RULES, step(attempt), attempt, jitter) == pytest.approx(
        spec_backoff(attempt, jitter)
    )


@settings(max_examples=200, deadline=None)
@given(attempt=attempts, jitter=jitters)
def test_backoff_stays_between_settle_and_jittered_cap(attempt: int, jitter: float) -> None:
    rung = step(attempt)
    delay = backoff(RULES, rung, attempt, jitter)
    base = backoff(RULES, rung, attempt, 0.0)

    assert rung.settle <= base <= max(RULES.backoff_cap, rung.settle)
    assert base <= delay <= base * (1 + RULES.jitter)  # < in exact arithmetic


@settings(max_examples=200, deadline=None)
@given(attempt=st.integers(1, RULES.max_attempts - 1))
def test_backoff_never_shrinks_as_the_default_ladder_climbs(attempt: int) -> None:
    assert backoff(RULES, step(attempt), attempt, 0.0) <= backoff(
        RULES, step(attempt + 1), attempt + 1, 0.0
    )


def test_the_one_exponential_backoff_grows_caps_and_never_overflows() -> None:
    assert [exponential(2.0, n, cap=300.0) for n in (0, 1, 2, 3, 9)] == [2, 2, 4, 8, 300]
    assert exponential(10.0, 3, cap=1e9, factor=1.5) == 22.5
    assert exponential(1.0, 10**6, cap=60.0, factor=10.0) == 60.0  # 10**999999 overflows


# ------------------------------------------------------------------------------- pacing


def test_a_bucket_lets_its_burst_through_then_one_slot_per_interval() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.reserve(10.0) for _ in range(6)] == [10.0, 10.0, 10.0, 10.5, 11.0, 11.5]
    # After a quiet spell the burst is back, never more.
    assert [bucket.reserve(20.0) for _ in range(4)] == [20.0, 20.0, 20.0, 20.5]


def test_a_bucket_without_a_burst_allows_one_seconds_worth() -> None:
    bucket = TokenBucket(rate=4.0)
    assert bucket.burst == 4
    slots = [bucket.reserve(0.0) for _ in range(8)]
    assert slots == [0.0, 0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0]
    assert TokenBucket(rate=0.5).burst == 1


def test_a_bucket_needs_a_rate() -> None:
    with pytest.raises(ValueError, match="positive rate"):
        TokenBucket(rate=0.0)
