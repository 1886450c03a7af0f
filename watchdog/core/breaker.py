"""Circuit breakers, one per recovery backend: stop hammering a backend that keeps failing.

Pure: no I/O and no clock reads; every method that depends on time takes `now` (an aware
UTC datetime, normally the database clock). The store adapter is `store/breakers.py`.

States and transitions::

    CLOSED ──(trip)──▶ OPEN ──(recovery_timeout elapsed)──▶ HALF_OPEN
      ▲                 ▲                                      │
      │                 └───────────(any failure)──────────────┤
      └──────────────(success_threshold successes)─────────────┘

* CLOSED: every call is allowed. It trips
  - in ``consecutive`` mode after `failure_threshold` failures in a row;
  - in ``rate`` mode when, over the last `monitoring_window` seconds, at least
    `minimum_requests` outcomes were recorded and the share of failures among them is at
    least `rate_threshold`.
* OPEN: calls are rejected (fail fast) until `next_attempt_at` = opened_at +
  `recovery_timeout`. The first `allow(now)` at or after it moves to HALF_OPEN.
* HALF_OPEN: trial calls. `allow(now)` says yes while fewer than `success_threshold`
  trials are outstanding (allowed, outcome not yet recorded); a trial whose outcome is
  not recorded within `recovery_timeout` is presumed lost and frees its slot, so a
  caller that never reports back cannot wedge the breaker. `success_threshold` successes
  in HALF_OPEN close the breaker; any failure re-opens it with a fresh `recovery_timeout`.

Outcomes recorded while OPEN (calls that were allowed before it opened and finished
late) count in the statistics only: they neither re-open nor shorten the wait.

Statistics: `failures`/`successes` are the current run of consecutive failures/successes
(`successes` restarts at 0 on entering HALF_OPEN and counts the trials); `total` and
`total_failures` count every outcome ever recorded; `failure_rate` is the share of
failures in the in-memory window (0.0 when it is empty). The window is kept in both
modes for the statistic, is emptied when the breaker closes (old failures must not
re-trip a recovered backend), and is not persisted: after a restart it starts empty.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

BreakerMode = Literal["consecutive", "rate"]


class BreakerState(enum.StrEnum):
    """Where a breaker is in its cycle; the `state` column of `watchdog_breakers`."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Transition(enum.StrEnum):
    """A state change, returned so the caller can audit and alert on it."""

    OPENED = "opened"  # CLOSED or HALF_OPEN → OPEN
    CLOSED = "closed"  # HALF_OPEN → CLOSED
    HALF_OPENED = "half_opened"  # OPEN → HALF_OPEN (only from `poll`/`allow`)


@dataclass(frozen=True, slots=True)
class BreakerRules:
    """The tuning of every breaker; field names mirror `config.BreakerSettings`."""

    mode: BreakerMode = "consecutive"
    failure_threshold: int = 5
    recovery_timeout: float = 60.0  # seconds
    success_threshold: int = 2
    rate_threshold: float = 0.5
    monitoring_window: float = 60.0  # seconds
    minimum_requests: int = 5

    def __post_init__(self) -> None:
        if self.mode not in ("consecutive", "rate"):
            raise ValueError(f"breaker mode must be 'consecutive' or 'rate', not {self.mode!r}")
        if min(self.failure_threshold, self.success_threshold, self.minimum_requests) < 1:
            raise ValueError("breaker thresholds and minimum_requests must be at least 1")
        if not 0 < self.rate_threshold <= 1:
            raise ValueError("breaker rate_threshold must be in (0, 1]")
        if self.recovery_timeout <= 0 or self.monitoring_window <= 0:
            raise ValueError("breaker recovery_timeout and monitoring_window must be positive")

    @property
    def recovery(self) -> timedelta:
        return timedelta(seconds=self.recovery_timeout)

    @property
    def window(self) -> timedelta:
        return timedelta(seconds=self.monitoring_window)


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A breaker's persistent state and statistics: one row of `watchdog_breakers`."""

    name: str
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0  # consecutive failures
    successes: int = 0  # consecutive successes (in HALF_OPEN: successful trials)
    total: int = 0  # outcomes ever recorded
    total_failures: int = 0  # failures ever recorded
    failure_rate: float = 0.0  # failures / outcomes in the monitoring window
    opened_at: datetime | None = None
    last_failure_at: datetime | None = None
    last_success_at: datetime | None = None
    next_attempt_at: datetime | None = None  # when OPEN may become HALF_OPEN
    last_error: str | None = None

    @property
    def total_successes(self) -> int:
        return self.total - self.total_failures


class CircuitBreaker:
    """One backend's breaker. Not thread-safe; the engine runs on one event loop."""

    def __init__(
        self, name: str, rules: BreakerRules, snapshot: BreakerSnapshot | None = None
    ) -> None:
        if snapshot is not None and snapshot.name != name:
            raise ValueError(f"snapshot of breaker {snapshot.name!r} given to {name!r}")
        self.name = name
        self.rules = rules
        self._state = snapshot or BreakerSnapshot(name)
        self._window: deque[tuple[datetime, bool]] = deque()  # (at, ok), oldest first
        self._trials: deque[datetime] = deque()  # when each outstanding trial was allowed
        self._dirty = False

    # ---------------------------------------------------------------- reading

    @property
    def state(self) -> BreakerState:
        """The stored state; OPEN stays OPEN until `poll`/`allow` sees it is due."""
        return self._state.state

    @property
    def dirty(self) -> bool:
        """Whether anything changed since construction or the last `mark_saved`."""
        return self._dirty

    @property
    def outstanding(self) -> int:
        """HALF_OPEN trials allowed whose outcome has not been recorded yet."""
        return len(self._trials)

    def snapshot(self, now: datetime | None = None) -> BreakerSnapshot:
        """The current state and statistics; with `now`, the window is pruned first."""
        if now is not None:
            self._prune(now)
        return replace(self._state, failure_rate=self._failure_rate())

    # ---------------------------------------------------------------- deciding

    def poll(self, now: datetime) -> Transition | None:
        """Move OPEN → HALF_OPEN once `next_attempt_at` has come; say whether it did."""
        if self._state.state is not BreakerState.OPEN or not self._due(now):
            return None
        self._change(state=BreakerState.HALF_OPEN, successes=0)
        self._trials.clear()
        return Transition.HALF_OPENED

    def allow(self, now: datetime) -> bool:
        """Whether a call may be attempted now; in HALF_OPEN, a yes takes a trial slot."""
        self.poll(now)
        state = self._state.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        return self._take_trial(now)

    # ---------------------------------------------------------------- recording

    def record_success(self, now: datetime) -> Transition | None:
        """Record a successful call; returns CLOSED when this success closed the breaker."""
        self._record(now, ok=True)
        self._change(
            failures=0,
            successes=self._state.successes + 1,
            total=self._state.total + 1,
            last_success_at=now,
        )
        if self._state.state is BreakerState.HALF_OPEN:
            self._finish_trial()
            if self._state.successes >= self.rules.success_threshold:
                self._close()
                return Transition.CLOSED
        return None

    def record_failure(self, now: datetime, error: str) -> Transition | None:
        """Record a failed call; returns OPENED when this failure opened the breaker."""
        self._record(now, ok=False)
        self._change(
            failures=self._state.failures + 1,
            successes=0,
            total=self._state.total + 1,
            total_failures=self._state.total_failures + 1,
            last_failure_at=now,
            last_error=error,
        )
        state = self._state.state
        if state is BreakerState.HALF_OPEN or (state is BreakerState.CLOSED and self._trips()):
            self._open(now)
            return Transition.OPENED
        return None

    def mark_saved(self, saved: BreakerSnapshot | None = None) -> None:
        """Clear `dirty`; given the snapshot that was saved, only if nothing changed since."""
        if saved is None or saved == self.snapshot():
            self._dirty = False

    # ---------------------------------------------------------------- internals

    def _change(self, **changes: Any) -> None:
        self._state = replace(self._state, **changes)
        self._dirty = True

    def _due(self, now: datetime) -> bool:
        due = self._state.next_attempt_at
        return due is None or now >= due

    def _take_trial(self, now: datetime) -> bool:
        horizon = now - self.rules.recovery
        while self._trials and self._trials[0] <= horizon:
            self._trials.popleft()  # never reported back: presumed lost
        if len(self._trials) >= self.rules.success_threshold:
            return False
        self._trials.append(now)
        return True

    def _finish_trial(self) -> None:
        if self._trials:
            self._trials.popleft()

    def _record(self, now: datetime, *, ok: bool) -> None:
        self._window.append((now, ok))
        self._prune(now)

    def _prune(self, now: datetime) -> None:
        horizon = now - self.rules.window
        while self._window and self._window[0][0] <= horizon:
            self._window.popleft()

    def _failure_rate(self) -> float:
        if not self._window:
            return 0.0
        failed = sum(1 for _, ok in self._window if not ok)
        return failed / len(self._window)

    def _trips(self) -> bool:
        rules = self.rules
        if rules.mode == "consecutive":
            return self._state.failures >= rules.failure_threshold
        if len(self._window) < rules.minimum_requests:
            return False
        return self._failure_rate() >= rules.rate_threshold

    def _open(self, now: datetime) -> None:
        self._change(
            state=BreakerState.OPEN,
            opened_at=now,
            next_attempt_at=now + self.rules.recovery,
        )
        self._trials.clear()

    def _close(self) -> None:
        self._change(state=BreakerState.CLOSED, failures=0, opened_at=None, next_attempt_at=None)
        self._trials.clear()
        self._window.clear()


class BreakerBoard:
    """The breakers of every backend by name; a breaker is created on first `get`."""

    def __init__(self, rules: BreakerRules) -> None:
        self.rules = rules
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, name: str) -> CircuitBreaker:
        """The breaker called `name`, a fresh CLOSED one if there was none."""
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = self._breakers[name] = CircuitBreaker(name, self.rules)
        return breaker

    def load(self, snapshots: Iterable[BreakerSnapshot]) -> None:
        """Replace the named breakers by ones restored from `snapshots` (not dirty)."""
        for snapshot in snapshots:
            self._breakers[snapshot.name] = CircuitBreaker(snapshot.name, self.rules, snapshot)

    def snapshots(self, now: datetime | None = None) -> list[BreakerSnapshot]:
        """Every breaker's snapshot, by name."""
        return [self._breakers[name].snapshot(now) for name in sorted(self._breakers)]

    def dirty(self, now: datetime | None = None) -> list[BreakerSnapshot]:
        """Snapshots of the breakers changed since they were last saved, by name."""
        return [s for s in self.snapshots(now) if self._breakers[s.name].dirty]

    def mark_saved(self, saved: Iterable[BreakerSnapshot]) -> None:
        """Clear `dirty` of each saved breaker that has not changed since its snapshot."""
        for snapshot in saved:
            breaker = self._breakers.get(snapshot.name)
            if breaker is not None:
                breaker.mark_saved(snapshot)

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._breakers))

    def __len__(self) -> int:
        return len(self._breakers)
