"""RetryingRecovery and retry_transient with small fake recoveries and reads."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from watchdog.core.errors import (
    PermanentRecoveryError,
    StoreSchemaError,
    StoreUnavailable,
    TransientRecoveryError,
    WatchdogError,
)
from watchdog.core.model import Action, ActionResult, Target
from watchdog.core.ports import Recovery
from watchdog.resilience import RetryingRecovery, retry_transient

TARGET = Target("inst-1", "worker-1")
FAST = {"first_wait": 0.01, "max_wait": 0.02}  # waits short enough for unit tests


@dataclass
class FakeRecovery:
    """Answers call n with `script[n]` (an error to raise, or None for success); the last
    entry repeats. `hang` seconds pass before each answer."""

    script: Sequence[BaseException | None]
    timeout: float = 5.0
    hang: Sequence[float] = (0.0,)
    calls: list[float] = field(default_factory=list)

    @property
    def action(self) -> Action:
        return Action.API_RESTART

    def key(self, target: Target) -> str:
        return f"key:{target.instance_id}"

    async def recover(self, target: Target) -> ActionResult:
        n = len(self.calls)
        self.calls.append(time.monotonic())
        await asyncio.sleep(self.hang[min(n, len(self.hang) - 1)])
        error = self.script[min(n, len(self.script) - 1)]
        if error is not None:
            raise error
        return ActionResult(detail={"call": n + 1, "instance": target.instance_id})


def transient(n: int = 0) -> TransientRecoveryError:
    return TransientRecoveryError(f"HTTP 503 from POST http://app/restart: busy #{n}")


# ---------------------------------------------------------------- RetryingRecovery


def test_it_is_a_recovery_with_the_inner_action_timeout_and_key() -> None:
    inner = FakeRecovery([None], timeout=7.5)
    wrapped: Recovery = RetryingRecovery(inner, attempts=4)
    assert wrapped.action is Action.API_RESTART
    assert wrapped.timeout == 7.5
    assert wrapped.key(TARGET) == "key:inst-1"
    assert isinstance(wrapped, RetryingRecovery)
    assert wrapped.inner is inner
    assert wrapped.attempts == 4


@pytest.mark.parametrize(
    "kwargs", [{"attempts": 0}, {"first_wait": 0.0}, {"first_wait": 3.0, "max_wait": 2.0}]
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="retry"):
        RetryingRecovery(FakeRecovery([None]), **kwargs)  # type: ignore[arg-type]


async def test_success_at_once_is_one_call() -> None:
    inner = FakeRecovery([None])
    result = await RetryingRecovery(inner, attempts=3, **FAST).recover(TARGET)
    assert result.detail == {"call": 1, "instance": "inst-1"}
    assert len(inner.calls) == 1


async def test_transient_failures_are_retried_until_success() -> None:
    inner = FakeRecovery([transient(1), transient(2), None])
    result = await RetryingRecovery(inner, attempts=3, **FAST).recover(TARGET)
    assert result.detail["call"] == 3
    assert len(inner.calls) == 3


async def test_a_permanent_error_is_raised_at_once_and_unchanged() -> None:
    error = PermanentRecoveryError("HTTP 404 from POST http://app/restart: no such instance")
    inner = FakeRecovery([error, None])
    with pytest.raises(PermanentRecoveryError) as caught:
        await RetryingRecovery(inner, attempts=5, **FAST).recover(TARGET)
    assert len(inner.calls) == 1
    assert caught.value is error
    assert "after" not in str(caught.value)


async def test_a_permanent_error_after_retries_names_the_tries() -> None:
    inner = FakeRecovery([transient(), PermanentRecoveryError("HTTP 404: gone"), None])
    with pytest.raises(PermanentRecoveryError) as caught:
        await RetryingRecovery(inner, attempts=5, **FAST).recover(TARGET)
    assert len(inner.calls) == 2
    assert str(caught.value) == "HTTP 404: gone (after 2 tries)"
    assert caught.value.transient is False


async def test_retries_stop_at_attempts_and_the_message_names_the_tries() -> None:
    inner = FakeRecovery([transient(1), transient(2), transient(3), None])
    with pytest.raises(TransientRecoveryError) as caught:
        await RetryingRecovery(inner, attempts=3, **FAST).recover(TARGET)
    assert len(inner.calls) == 3
    assert str(caught.value) == "HTTP 503 from POST http://app/restart: busy #3 (after 3 tries)"
    assert caught.value.transient is True
    assert isinstance(caught.value.__cause__, TransientRecoveryError)  # the original


async def test_backoff_waits_grow_from_the_first_wait() -> None:
    inner = FakeRecovery([transient()])
    with pytest.raises(TransientRecoveryError, match=r"\(after 3 tries\)"):
        await RetryingRecovery(inner, attempts=3, first_wait=0.05, max_wait=0.1).recover(TARGET)
    gaps = [b - a for a, b in zip(inner.calls, inner.calls[1:], strict=False)]
    assert len(gaps) == 2
    assert all(0.045 <= gap <= 0.2 for gap in gaps), gaps


async def test_the_timeout_bounds_all_tries_together() -> None:
    """Transient failures forever: the retries stop within the recovery's timeout."""
    inner = FakeRecovery([transient()], timeout=0.5)
    start = time.monotonic()
    with pytest.raises(TransientRecoveryError) as caught:
        await RetryingRecovery(inner, attempts=100).recover(TARGET)
    elapsed = time.monotonic() - start
    assert elapsed < 0.5
    tries = len(inner.calls)
    assert 1 <= tries < 100
    assert str(caught.value).endswith(f"(after {tries} {'try' if tries == 1 else 'tries'})")


async def test_no_retry_starts_when_its_wait_would_overrun_the_deadline() -> None:
    """The first try used most of the budget: the error is raised, not slept on."""
    inner = FakeRecovery([transient()], timeout=0.5, hang=(0.45,))
    start = time.monotonic()
    with pytest.raises(TransientRecoveryError, match=r"busy #0 \(after 1 try\)$"):
        await RetryingRecovery(inner, attempts=3).recover(TARGET)
    assert time.monotonic() - start < 0.7  # no wait, no second try
    assert len(inner.calls) == 1


async def test_a_retry_still_running_at_the_deadline_is_cut_off() -> None:
    inner = FakeRecovery([transient()], timeout=0.5, hang=(0.0, 10.0))
    start = time.monotonic()
    with pytest.raises(TransientRecoveryError) as caught:
        await RetryingRecovery(inner, attempts=3, **FAST).recover(TARGET)
    assert 0.45 < time.monotonic() - start < 0.75
    assert len(inner.calls) == 2
    message = str(caught.value)
    assert message.startswith("api_restart did not finish within its 0.5s budget")
    assert "the try before failed: HTTP 503" in message
    assert message.endswith("(after 2 tries)")


async def test_a_bug_in_the_backend_is_not_retried() -> None:
    inner = FakeRecovery([KeyError("oops"), None])
    with pytest.raises(KeyError):
        await RetryingRecovery(inner, attempts=3, **FAST).recover(TARGET)
    assert len(inner.calls) == 1


async def test_cancellation_is_not_retried() -> None:
    inner = FakeRecovery([None], hang=(10.0,))
    task = asyncio.create_task(RetryingRecovery(inner, attempts=3, **FAST).recover(TARGET))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(inner.calls) == 1


async def test_one_attempt_passes_errors_through_unchanged() -> None:
    error = transient()
    inner = FakeRecovery([error, None])
    with pytest.raises(TransientRecoveryError) as caught:
        await RetryingRecovery(inner, attempts=1, **FAST).recover(TARGET)
    assert caught.value is error
    assert len(inner.calls) == 1


async def test_each_retry_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    inner = FakeRecovery([transient(1), None])
    with caplog.at_level(logging.WARNING, logger="watchdog.resilience"):
        await RetryingRecovery(inner, attempts=3, **FAST).recover(TARGET)
    [record] = caplog.records
    assert "api_restart of inst-1 failed (try 1 of 3), retrying in" in record.getMessage()
    assert "busy #1" in record.getMessage()


async def test_a_subclass_keeps_its_type_and_flag() -> None:
    class Busy(TransientRecoveryError):
        pass

    inner = FakeRecovery([Busy("busy")])
    with pytest.raises(Busy, match=r"^busy \(after 2 tries\)$") as caught:
        await RetryingRecovery(inner, attempts=2, **FAST).recover(TARGET)
    assert caught.value.transient is True


# ---------------------------------------------------------------- retry_transient


@dataclass
class FakeRead:
    script: Sequence[WatchdogError | None]
    calls: int = 0

    async def __call__(self) -> str:
        self.calls += 1
        error = self.script[min(self.calls - 1, len(self.script) - 1)]
        if error is not None:
            raise error
        return f"rows after {self.calls}"


async def test_a_read_is_retried_after_store_unavailable() -> None:
    read = FakeRead([StoreUnavailable("database is locked"), None])
    assert await retry_transient(read, 3, "detection query") == "rows after 2"
    assert read.calls == 2


async def test_a_read_gives_up_after_attempts_naming_the_tries() -> None:
    read = FakeRead([StoreUnavailable("database unavailable (detection query): refused")])
    with pytest.raises(StoreUnavailable) as caught:
        await retry_transient(read, 3, "detection query")
    assert read.calls == 3
    assert str(caught.value) == ("database unavailable (detection query): refused (after 3 tries)")


async def test_a_schema_error_is_not_retried() -> None:
    error = StoreSchemaError("no such table: instances")
    read = FakeRead([error, None])
    with pytest.raises(StoreSchemaError) as caught:
        await retry_transient(read, 3, "detection query")
    assert caught.value is error
    assert read.calls == 1


async def test_read_retries_are_short() -> None:
    read = FakeRead([StoreUnavailable("busy")])
    start = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await retry_transient(read, 3, "detection query")
    assert time.monotonic() - start < 1.2  # two waits of at most 0.5 s


async def test_read_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        await retry_transient(FakeRead([None]), 0, "x")
