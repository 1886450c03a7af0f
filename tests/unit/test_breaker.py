"""The circuit breaker state machine, driven with explicit times (nothing sleeps).

Example tests pin each transition down at its boundary; a property test runs random
sequences of outcomes, `allow` calls and clock steps and checks the invariants after
every step, against a small count of what was recorded.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watchdog.config import BreakerSettings
from watchdog.core.breaker import (
    BreakerBoard,
    BreakerRules,
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
    Transition,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
RULES = BreakerRules()
RATE = BreakerRules(mode="rate")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def fail(breaker: CircuitBreaker, times: int, start: float = 0.0) -> list[Transition | None]:
    return [breaker.record_failure(at(start + i), f"boom {i}") for i in range(times)]


def opened(rules: BreakerRules = RULES) -> CircuitBreaker:
    """A breaker opened at t=4 by five consecutive failures at t=0..4."""
    breaker = CircuitBreaker("api", rules)
    fail(breaker, 5)
    assert breaker.state is BreakerState.OPEN
    return breaker


# ------------------------------------------------------------------------- rules


def test_rules_mirror_the_settings_by_name() -> None:
    settings_ = BreakerSettings()
    fields = {name: getattr(settings_, name) for name in BreakerSettings.model_fields}
    assert BreakerRules(**fields) == RULES


@pytest.mark.parametrize(
    "bad",
    [
        {"mode": "sometimes"},
        {"failure_threshold": 0},
        {"success_threshold": 0},
        {"minimum_requests": 0},
        {"rate_threshold": 0.0},
        {"rate_threshold": 1.5},
        {"recovery_timeout": 0.0},
        {"monitoring_window": -1.0},
    ],
)
def test_rules_refuse_nonsense(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="breaker"):
        BreakerRules(**bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------------- consecutive mode


def test_four_failures_stay_closed_the_fifth_opens() -> None:
    breaker = CircuitBreaker("api", RULES)
    assert fail(breaker, 4) == [None] * 4
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow(at(4))
    assert breaker.record_failure(at(5), "boom") is Transition.OPENED
    snap = breaker.snapshot()
    assert snap.state is BreakerState.OPEN
    assert snap.failures == 5
    assert snap.opened_at == at(5)
    assert snap.next_attempt_at == at(65)
    assert snap.last_error == "boom"


def test_a_success_resets_the_consecutive_failures() -> None:
    breaker = CircuitBreaker("api", RULES)
    fail(breaker, 4)
    assert breaker.record_success(at(4)) is None
    assert breaker.snapshot().failures == 0
    assert fail(breaker, 4, start=5) == [None] * 4
    assert breaker.state is BreakerState.CLOSED
    assert breaker.record_failure(at(9), "boom") is Transition.OPENED


def test_open_rejects_until_the_recovery_timeout_then_half_opens() -> None:
    breaker = opened()  # at t=4, next attempt at t=64
    assert not breaker.allow(at(4))
    assert not breaker.allow(at(63.999))
    assert breaker.snapshot().state is BreakerState.OPEN
    assert breaker.poll(at(63.999)) is None
    assert breaker.poll(at(64)) is Transition.HALF_OPENED
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.poll(at(64)) is None  # already half-open
    assert breaker.allow(at(64))


def test_allow_half_opens_by_itself_when_due() -> None:
    breaker = opened()
    assert breaker.allow(at(64))
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.snapshot().successes == 0


def test_two_successes_in_half_open_close_it() -> None:
    breaker = opened()
    assert breaker.allow(at(64))
    assert breaker.record_success(at(65)) is None
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow(at(66))
    assert breaker.record_success(at(67)) is Transition.CLOSED
    snap = breaker.snapshot()
    assert snap.state is BreakerState.CLOSED
    assert (snap.failures, snap.opened_at, snap.next_attempt_at) == (0, None, None)
    assert breaker.allow(at(68))


def test_a_failure_in_half_open_reopens_with_a_new_next_attempt() -> None:
    breaker = opened()
    assert breaker.allow(at(64))
    breaker.record_success(at(65))
    assert breaker.allow(at(66))
    assert breaker.record_failure(at(70), "still down") is Transition.OPENED
    snap = breaker.snapshot()
    assert snap.state is BreakerState.OPEN
    assert snap.opened_at == at(70)
    assert snap.next_attempt_at == at(130)
    assert snap.successes == 0
    assert not breaker.allow(at(129))
    assert breaker.allow(at(130))


def test_half_open_admits_at_most_success_threshold_outstanding_trials() -> None:
    breaker = opened()
    assert breaker.allow(at(64))
    assert breaker.allow(at(64))
    assert not breaker.allow(at(64))  # two trials outstanding
    assert breaker.outstanding == 2
    breaker.record_success(at(65))
    assert breaker.outstanding == 1
    assert breaker.allow(at(65))  # a slot freed


def test_a_trial_never_reported_back_frees_its_slot_after_the_recovery_timeout() -> None:
    breaker = opened()
    assert breaker.allow(at(64))
    assert breaker.allow(at(64))
    assert not breaker.allow(at(123.9))
    assert breaker.allow(at(124))  # both presumed lost
    assert breaker.outstanding == 1


def test_outcomes_recorded_while_open_count_only_in_the_statistics() -> None:
    breaker = opened()
    assert breaker.record_failure(at(30), "late") is None
    assert breaker.record_success(at(31)) is None
    snap = breaker.snapshot()
    assert snap.state is BreakerState.OPEN
    assert snap.next_attempt_at == at(64)  # not pushed back
    assert (snap.total, snap.total_failures) == (7, 6)
    assert snap.last_success_at == at(31)


def test_a_failure_in_closed_after_closing_starts_a_new_count() -> None:
    breaker = opened()
    breaker.allow(at(64))
    breaker.record_success(at(64))
    breaker.record_success(at(64))
    assert fail(breaker, 4, start=65) == [None] * 4
    assert breaker.state is BreakerState.CLOSED


# ------------------------------------------------------------------------- rate mode


def test_rate_mode_never_opens_below_minimum_requests() -> None:
    breaker = CircuitBreaker("api", RATE)
    assert fail(breaker, 4) == [None] * 4  # 100 % failures, but only 4 calls
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot().failure_rate == 1.0


def test_rate_mode_opens_at_the_threshold_over_the_window() -> None:
    breaker = CircuitBreaker("api", RATE)
    for i in range(3):
        breaker.record_success(at(i))
    assert breaker.record_failure(at(3), "a") is None
    assert breaker.record_failure(at(4), "b") is None  # 2 of 5: 0.4
    assert breaker.record_success(at(5)) is None  # 2 of 6
    assert breaker.record_failure(at(6), "c") is None  # 3 of 7
    assert breaker.record_failure(at(7), "d") is Transition.OPENED  # 4 of 8: 0.5
    snap = breaker.snapshot()
    assert snap.state is BreakerState.OPEN
    assert snap.failure_rate == 0.5
    assert snap.failures == 2  # not five in a row: the rate tripped it
    assert snap.next_attempt_at == at(67)


def test_rate_mode_ignores_consecutive_failures_below_the_rate() -> None:
    breaker = CircuitBreaker("api", replace(RATE, rate_threshold=0.9))
    for i in range(5):
        breaker.record_success(at(i))
    fail(breaker, 6, start=5)  # 6 in a row, 6 of 11 ≈ 0.55
    assert breaker.state is BreakerState.CLOSED


def test_rate_mode_outcomes_fall_out_of_the_window() -> None:
    breaker = CircuitBreaker("api", RATE)
    fail(breaker, 4)  # t=0..3
    for i in range(4):
        breaker.record_success(at(10 + i))
    # t=61: the failures at t=0 and 1 are 60 s or more old and out of the window.
    assert breaker.record_failure(at(61), "e") is None  # 3 failures of 7
    assert breaker.snapshot().failure_rate == pytest.approx(3 / 7)
    assert breaker.snapshot(at(200)).failure_rate == 0.0  # everything aged out
    assert breaker.state is BreakerState.CLOSED


def test_rate_mode_half_open_and_close_as_in_consecutive_mode() -> None:
    breaker = CircuitBreaker("api", RATE)
    assert fail(breaker, 5)[-1] is Transition.OPENED
    assert breaker.allow(at(64))
    breaker.record_success(at(64))
    assert breaker.record_success(at(65)) is Transition.CLOSED
    # The failures that opened it are forgotten: one more failure does not re-trip.
    fail(breaker, 4, start=66)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot().failure_rate == 1.0


# ------------------------------------------------------------------------- statistics


def test_statistics() -> None:
    breaker = CircuitBreaker("db_flag", RULES)
    assert breaker.snapshot() == BreakerSnapshot("db_flag")
    breaker.record_success(at(1))
    breaker.record_failure(at(2), "refused")
    breaker.record_success(at(3))
    breaker.record_failure(at(4), "timeout")
    snap = breaker.snapshot()
    assert (snap.total, snap.total_failures, snap.total_successes) == (4, 2, 2)
    assert (snap.failures, snap.successes) == (1, 0)
    assert snap.failure_rate == 0.5
    assert (snap.last_success_at, snap.last_failure_at) == (at(3), at(4))
    assert snap.last_error == "timeout"
    assert snap.next_attempt_at is None


def test_dirty_tracks_changes_since_the_last_save() -> None:
    breaker = CircuitBreaker("api", RULES)
    assert not breaker.dirty
    assert breaker.allow(at(0))
    assert not breaker.dirty  # allowing in CLOSED changes nothing
    breaker.record_success(at(0))
    assert breaker.dirty
    saved = breaker.snapshot()
    breaker.record_failure(at(1), "x")
    breaker.mark_saved(saved)  # a stale snapshot: the failure is not saved yet
    assert breaker.dirty
    breaker.mark_saved(breaker.snapshot())
    assert not breaker.dirty
    fail(breaker, 4, start=2)
    breaker.mark_saved()
    assert not breaker.dirty
    breaker.allow(at(100))  # OPEN → HALF_OPEN is a change
    assert breaker.dirty


# ------------------------------------------------------------------------- snapshots


def test_a_snapshot_round_trips_into_a_new_breaker() -> None:
    breaker = CircuitBreaker("api", RULES)
    fail(breaker, 3)
    restored = CircuitBreaker("api", RULES, breaker.snapshot())
    assert _persisted(restored.snapshot()) == _persisted(breaker.snapshot())
    assert restored.snapshot().failure_rate == 0.0  # the window is not persisted
    assert breaker.snapshot().failure_rate == 1.0
    assert not restored.dirty
    assert restored.record_failure(at(3), "x") is None
    assert restored.record_failure(at(4), "x") is Transition.OPENED


def test_an_open_snapshot_stays_open_until_its_next_attempt() -> None:
    original = opened()
    restored = CircuitBreaker("api", RULES, original.snapshot())
    for breaker in (original, restored):
        assert not breaker.allow(at(63))
        assert breaker.allow(at(64))
        breaker.record_success(at(64))
        assert breaker.record_success(at(65)) is Transition.CLOSED
    assert restored.snapshot() == original.snapshot()


def test_a_half_open_snapshot_starts_with_no_outstanding_trials() -> None:
    original = opened()
    original.allow(at(64))
    original.allow(at(64))
    restored = CircuitBreaker("api", RULES, original.snapshot())
    assert restored.state is BreakerState.HALF_OPEN
    assert restored.outstanding == 0
    assert restored.allow(at(65))


def test_a_snapshot_of_another_breaker_is_refused() -> None:
    with pytest.raises(ValueError, match="'db_flag'"):
        CircuitBreaker("api", RULES, BreakerSnapshot("db_flag"))


def test_an_open_snapshot_without_next_attempt_is_due_at_once() -> None:
    snap = BreakerSnapshot("api", state=BreakerState.OPEN, opened_at=T0)
    assert CircuitBreaker("api", RULES, snap).allow(T0)


# ------------------------------------------------------------------------- board


def test_board_creates_loads_and_reports_dirty_breakers() -> None:
    board = BreakerBoard(RULES)
    board.load([BreakerSnapshot("supervisor", failures=4), BreakerSnapshot("api")])
    assert list(board) == ["api", "supervisor"]
    assert "api" in board
    assert "systemd" not in board
    assert board.dirty() == []
    assert board.get("supervisor").record_failure(at(0), "x") is Transition.OPENED
    fresh = board.get("systemd")
    assert fresh.state is BreakerState.CLOSED
    assert board.get("systemd") is fresh
    assert len(board) == 3
    assert [s.name for s in board.snapshots()] == ["api", "supervisor", "systemd"]
    dirty = board.dirty(at(1))
    assert [s.name for s in dirty] == ["supervisor"]
    board.get("api").record_success(at(2))  # after the snapshot was taken
    board.mark_saved([*dirty, BreakerSnapshot("gone")])
    assert [s.name for s in board.dirty()] == ["api"]


# ------------------------------------------------------------------------- properties

_ops = st.lists(
    st.tuples(
        st.sampled_from(["success", "failure", "allow"]),
        st.floats(min_value=0, max_value=90, allow_nan=False),
    ),
    max_size=80,
)
_rules = st.builds(
    BreakerRules,
    mode=st.sampled_from(["consecutive", "rate"]),
    failure_threshold=st.integers(1, 6),
    recovery_timeout=st.floats(1, 120),
    success_threshold=st.integers(1, 3),
    rate_threshold=st.floats(0.05, 1.0),
    monitoring_window=st.floats(1, 120),
    minimum_requests=st.integers(1, 8),
)


@settings(max_examples=300, deadline=None)
@given(rules=_rules, ops=_ops)
def test_invariants_hold_under_any_sequence(
    rules: BreakerRules, ops: list[tuple[str, float]]
) -> None:
    breaker = CircuitBreaker("api", rules)
    now, successes, failures = T0, 0, 0
    for op, step in ops:
        now += timedelta(seconds=step)
        before = breaker.snapshot()
        if op == "allow":
            allowed = breaker.allow(now)
            if before.state is BreakerState.OPEN and before.next_attempt_at is not None:
                assert not allowed or now >= before.next_attempt_at
            if breaker.state is BreakerState.OPEN:
                assert not allowed
        elif op == "success":
            successes += 1
            transition = breaker.record_success(now)
            assert transition in (None, Transition.CLOSED)
            assert (transition is Transition.CLOSED) == (
                before.state is BreakerState.HALF_OPEN and breaker.state is BreakerState.CLOSED
            )
        else:
            failures += 1
            transition = breaker.record_failure(now, "x")
            assert transition in (None, Transition.OPENED)
            assert (transition is Transition.OPENED) == (
                before.state is not BreakerState.OPEN and breaker.state is BreakerState.OPEN
            )
        _check(breaker.snapshot(), rules, successes, failures)


def _check(snap: BreakerSnapshot, rules: BreakerRules, successes: int, failures: int) -> None:
    assert snap.state in set(BreakerState)
    assert min(snap.failures, snap.successes, snap.total, snap.total_failures) >= 0
    assert snap.total == successes + failures
    assert snap.total_failures == failures
    assert snap.total_successes == successes
    assert 0.0 <= snap.failure_rate <= 1.0
    if snap.state is BreakerState.OPEN:
        assert snap.opened_at is not None
        assert snap.next_attempt_at == snap.opened_at + timedelta(seconds=rules.recovery_timeout)
    if snap.state is BreakerState.CLOSED:
        assert snap.opened_at is None
        assert snap.next_attempt_at is None
    if snap.state is BreakerState.HALF_OPEN:
        assert snap.successes < rules.success_threshold


@settings(max_examples=200, deadline=None)
@given(rules=_rules, ops=_ops)
def test_restoring_from_snapshots_changes_nothing_in_consecutive_mode(
    rules: BreakerRules, ops: list[tuple[str, float]]
) -> None:
    """A breaker rebuilt from its snapshot before every step acts like one never rebuilt.

    Only between trials (none outstanding: those die with the process) and in consecutive
    mode (the rate window is not persisted, so `failure_rate` is left out).
    """
    rules = replace(rules, mode="consecutive")
    twin, restored, now = CircuitBreaker("api", rules), CircuitBreaker("api", rules), T0
    for op, step in ops:
        now += timedelta(seconds=step)
        if restored.outstanding == 0:
            restored = CircuitBreaker("api", rules, restored.snapshot())
        assert _apply(restored, op, now) == _apply(twin, op, now)
        assert _persisted(restored.snapshot()) == _persisted(twin.snapshot())


def _persisted(snap: BreakerSnapshot) -> BreakerSnapshot:
    return replace(snap, failure_rate=0.0)


def _apply(breaker: CircuitBreaker, op: str, now: datetime) -> object:
    if op == "allow":
        return breaker.allow(now)
    if op == "success":
        return breaker.record_success(now)
    return breaker.record_failure(now, "x")
