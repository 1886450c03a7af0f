"""The dry run's view of the open incidents, as the ledger hands the same cached mapping
over cycle after cycle: it must follow the would-be closings and the instances coming
back, never serve a stale view."""

from __future__ import annotations

from datetime import UTC, datetime

from watchdog.core.model import Incident, IncidentState, Reason
from watchdog.core.policy import Dismiss, Resolve
from watchdog.engine.dry_run import DryRun
from watchdog.testing import FakeClock, MemoryLedger

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def incident(n: int, instance_id: str) -> Incident:
    return Incident(n, instance_id, Reason.STALE_HEARTBEAT, IncidentState.OPEN, 1, NOW, NOW)


async def test_the_view_follows_closings_and_returns_on_the_same_cached_mapping() -> None:
    cached = {"a": incident(1, "a"), "b": incident(2, "b"), "c": incident(3, "c")}
    ledger = MemoryLedger(FakeClock())
    dry = DryRun(ledger)
    assert set(dry.view(cached, {"a": 1, "b": 1})) == {"a", "b", "c"}

    await dry.record([Resolve(cached["c"]), Dismiss(cached["b"], "disabled")], cached)
    assert set(dry.view(cached, {"a": 1})) == {"a"}  # a live daemon closed b and c
    assert set(dry.view(cached, {"a": 1})) == {"a"}  # the same again, from the same cache

    assert set(dry.view(cached, {"a": 1, "c": 1})) == {"a", "c"}  # c froze again: still open
    assert set(dry.view(cached, {"a": 1})) == {"a", "c"}  # and stays in view (no new closing)

    reloaded = {"a": cached["a"], "b": incident(4, "b")}  # c closed by hand, b reopened anew
    assert set(dry.view(reloaded, {"a": 1})) == {"a", "b"}
    assert cached.keys() == {"a", "b", "c"}  # the ledger's cache is never changed
    assert [r.action for r in ledger.rows] == ["recovered", "dismissed"]  # each once
