"""Retries for transient faults, and only for those.

What is retried:

* A recovery call wrapped in `RetryingRecovery` that raised a `WatchdogError` with
  `transient=True`: connection refused or reset, HTTP 429/502/503/504, no answer in time,
  supervisord unreachable, exit status 75 (EX_TEMPFAIL), the database busy while setting a
  flag. Up to `attempts` tries, with exponential backoff and jitter (`FIRST_WAIT` at first,
  at most `MAX_WAIT`), and never past the recovery's own `timeout`: that is the budget of the
  whole action, retries included (see `Recovery.timeout`), so the engine's backstop
  (`timeout` + margin) still holds. A retry is not started when its wait would leave less
  than a quarter of the budget, and a retry still running at the deadline is cancelled.
* An idempotent store read run through `retry_transient` that raised `StoreUnavailable`:
  SQLite busy, a PostgreSQL connection dropped or timed out. A few tries with a short
  backoff; each try is already bounded by the database timeout (`Database.guard`).
* An idempotent store write that must not be lost, run through `retry_until_available`:
  the outcomes of recovery calls, which the database holds to one per intent, so one
  written twice (its commit acknowledgement lost) is appended once. Tried until the
  database answers, with a backoff growing to a few seconds.

What never is:

* Permanent errors (other HTTP 4xx, an unknown program or unit, a missing table or column,
  bad configuration): a retry would only repeat them, so they are raised at once.
* Exceptions that are not `WatchdogError`s (a bug in an adapter), and cancellation.
* Other store writes. A write whose commit acknowledgement was lost may still have
  committed, and running it again could append a second audit row or claim an attempt
  twice. The engine retries the next cycle instead, from the state it reads back.

The final error keeps its type and `transient` flag; its message says how many tries were
made, e.g. "HTTP 503 from POST http://app/restart: busy (after 3 tries)".
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
)
from tenacity.stop import stop_base

from watchdog.core.errors import TransientRecoveryError, WatchdogError
from watchdog.core.model import Action, ActionResult, Target
from watchdog.core.policy import exponential
from watchdog.core.ports import Recovery

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_WAIT = 0.2
"""Seconds before the first retry of a recovery (a random wait between this and twice it)."""
MAX_WAIT = 2.0
"""The longest wait between two tries of a recovery."""
MIN_TRY_SHARE = 0.25
"""A retry starts only when at least this share of the budget is left after its wait."""
READ_FIRST_WAIT = 0.05
READ_MAX_WAIT = 0.5


class RetryingRecovery:
    """A `Recovery` that tries `inner` again after transient failures, within its timeout.

    Same `action`, `timeout` and `key` as `inner`; `inner` is there for callers that need
    the backend itself (e.g. to ask a `ProcessLocator` where a process runs).
    """

    def __init__(
        self,
        inner: Recovery,
        attempts: int = 3,
        *,
        first_wait: float = FIRST_WAIT,
        max_wait: float = MAX_WAIT,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"retry attempts must be at least 1, got {attempts!r}")
        if not 0 < first_wait <= max_wait:
            raise ValueError(
                f"retry waits must satisfy 0 < first_wait <= max_wait, "
                f"got {first_wait!r} and {max_wait!r}"
            )
        self._inner = inner
        self._attempts = attempts
        self._first_wait = first_wait
        self._max_wait = max_wait

    @property
    def inner(self) -> Recovery:
        return self._inner

    @property
    def attempts(self) -> int:
        return self._attempts

    @property
    def action(self) -> Action:
        return self._inner.action

    @property
    def timeout(self) -> float:
        return self._inner.timeout

    def key(self, target: Target) -> str:
        return self._inner.key(target)

    async def recover(self, target: Target) -> ActionResult:
        budget = self._inner.timeout
        clock = asyncio.get_running_loop().time
        deadline = clock() + budget
        # The first try runs without the retry machinery (most calls succeed at once, and a
        # storm makes a thousand); only a transient failure starts it, replaying that try.
        try:  # bounded by the backend's own timeout, whose message is clearer
            return await self._inner.recover(target)
        except WatchdogError as exc:
            if self._attempts == 1 or not exc.transient:
                raise
            previous: WatchdogError = exc
        tries, replay = 1, True

        async def attempt() -> ActionResult:
            nonlocal tries, previous, replay
            if replay:  # the first try, already made: tenacity waits and logs after it
                replay = False
                raise previous
            tries += 1
            try:
                return await self._bounded(target, deadline, previous)
            except WatchdogError as exc:
                previous = exc
                raise

        retrying = AsyncRetrying(
            stop=_stop(self._attempts, budget, deadline, clock),
            wait=_wait(self._first_wait, self._max_wait),
            retry=retry_if_exception(_is_transient),
            before_sleep=_log_retry(f"{self.action} of {target.instance_id}", self._attempts),
            reraise=True,
        )
        try:
            result: ActionResult = await retrying(attempt)
        except WatchdogError as exc:
            _raise_with_tries(exc, tries)
        return result

    async def _bounded(
        self, target: Target, deadline: float, previous: WatchdogError | None
    ) -> ActionResult:
        """A retry, cancelled when it is still running at the deadline."""
        bound = asyncio.timeout_at(deadline)
        try:
            async with bound:
                return await self._inner.recover(target)
        except TimeoutError:
            if not bound.expired():
                raise
            message = f"{self.action} did not finish within its {self.timeout:g}s budget"
            if previous is not None:
                message += f"; the try before failed: {previous}"
            raise TransientRecoveryError(message) from None


async def retry_transient(
    func: Callable[[], Awaitable[T]],
    attempts: int,
    what: str,
    *,
    first_wait: float = READ_FIRST_WAIT,
    max_wait: float = READ_MAX_WAIT,
    unless: type[BaseException] | None = None,
) -> T:
    """`await func()`, tried up to `attempts` times in all while it raises a transient
    `WatchdogError` (for the store: `StoreUnavailable`), with a short backoff.

    Only for idempotent work such as store reads; never for writes (see the module
    docstring). `what` names the work in log lines. The last error is raised with its
    type kept and "(after N tries)" added to its message. Errors of type `unless` are
    never retried (a timeout has already used the whole bound).
    """
    if attempts < 1:
        raise ValueError(f"retry attempts must be at least 1, got {attempts!r}")
    tries = 0

    async def attempt() -> T:
        nonlocal tries
        tries += 1
        return await func()

    retrying = AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=_wait(first_wait, max_wait),
        retry=retry_if_exception(
            lambda exc: _is_transient(exc) and not (unless and isinstance(exc, unless))
        ),
        before_sleep=_log_retry(what, attempts),
        reraise=True,
    )
    try:
        result: T = await retrying(attempt)
    except WatchdogError as exc:
        if tries > 1:
            _raise_with_tries(exc, tries)
        raise
    return result


async def retry_until_available(
    func: Callable[[], Awaitable[T]],
    *,
    on_failure: Callable[[WatchdogError, int], None],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    first_wait: float = 0.2,
    max_wait: float = 5.0,
) -> T:
    """`await func()` (a coroutine function) until it does not raise a transient
    `WatchdogError`, however long the store stays away; `on_failure(error, failures so
    far)` after each transient failure. Only for idempotent writes (see the module
    docstring); permanent errors are raised."""
    failures = 0

    def failed(state: RetryCallState) -> None:
        nonlocal failures
        failures += 1
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, WatchdogError):
            on_failure(error, failures)

    retrying = AsyncRetrying(
        wait=_wait(first_wait, max_wait),
        retry=retry_if_exception(_is_transient),
        before_sleep=failed,
        sleep=sleep,
        reraise=True,
    )
    result: T = await retrying(func)
    return result


# ---------------------------------------------------------------------------- internals


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, WatchdogError) and exc.transient


def _stop(attempts: int, budget: float, deadline: float, clock: Callable[[], float]) -> stop_base:
    """Stop after `attempts` tries, at the deadline (on `clock`), or when the next wait
    would leave less than MIN_TRY_SHARE of the budget for the try after it."""
    last_start = deadline - budget * MIN_TRY_SHARE
    return (
        stop_after_attempt(attempts)
        | _Stop(lambda state: clock() >= deadline)
        | _Stop(lambda state: clock() + (state.upcoming_sleep or 0.0) >= last_start)
    )


class _Stop(stop_base):
    """A stop condition from a predicate on the retry state."""

    def __init__(self, predicate: Callable[[RetryCallState], bool]) -> None:
        self._predicate = predicate

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._predicate(retry_state)


def _wait(first: float, maximum: float) -> Callable[[RetryCallState], float]:
    """Full jitter above a floor: the n-th wait is uniform in [first, min(2**n * first, max)]."""

    def wait(state: RetryCallState) -> float:
        return random.uniform(first, exponential(2 * first, state.attempt_number, cap=maximum))

    return wait


def _log_retry(what: str, attempts: int) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "%s failed (try %d of %d), retrying in %.2fs: %s",
            what,
            state.attempt_number,
            attempts,
            state.upcoming_sleep,
            error,
        )

    return before_sleep


def _raise_with_tries(exc: WatchdogError, tries: int) -> NoReturn:
    """Raise a copy of `exc` (same type and flags) whose message ends with the tries made."""
    message = f"{exc} (after {tries} {'try' if tries == 1 else 'tries'})"
    try:
        annotated = copy.copy(exc)
    except Exception:  # a type that cannot be rebuilt from its args: change it in place
        exc.args = (message,)
        raise exc from exc.__cause__
    annotated.args = (message,)
    raise annotated from exc
