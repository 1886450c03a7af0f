"""The application's table in memory, judged by `policy.classify` (the rule the SQL
query mirrors)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from watchdog.core.model import (
    Finding,
    Scan,
)
from watchdog.core.policy import (
    DetectionRules,
    InstanceRow,
    classify,
    time_to_threshold,
    unmonitored_reason,
)
from watchdog.testing.clock import FakeClock

if TYPE_CHECKING:
    pass


@dataclass(slots=True)
class InstanceRecord:
    """One mutable row of the application's table."""

    id: str
    enabled: bool
    status: str
    status_changed_at: datetime
    last_heartbeat_at: datetime | None
    force_reconnect: bool = False
    process: str | None = None


class MemoryInstanceStore:
    """The application's table in a dict; ages are measured against `clock.now`.

    An instance freezes when the test stops calling `beat`.
    """

    def __init__(self, clock: FakeClock, rules: DetectionRules | None = None) -> None:
        self.clock = clock
        self.rules = rules if rules is not None else DetectionRules()
        self.instances: dict[str, InstanceRecord] = {}
        self.scan_count = 0

    def add(
        self,
        instance_id: str,
        *,
        enabled: bool = True,
        status: str = "CONNECTED",
        beat: bool = True,
        process: str | None = None,
    ) -> InstanceRecord:
        """Insert an instance whose status changed now and, if `beat`, that beat now."""
        now = self.clock.now
        record = InstanceRecord(
            instance_id, enabled, status, now, now if beat else None, process=process
        )
        self.instances[instance_id] = record
        return record

    def beat(self, instance_id: str) -> None:
        """Record a heartbeat at the clock's now."""
        self.instances[instance_id].last_heartbeat_at = self.clock.now

    def set_status(self, instance_id: str, status: str) -> None:
        """Change the status; `status_changed_at` moves only when it really changes."""
        record = self.instances[instance_id]
        if record.status != status:
            record.status = status
            record.status_changed_at = self.clock.now

    def set_enabled(self, instance_id: str, enabled: bool) -> None:
        self.instances[instance_id].enabled = enabled

    async def scan(self, known: Mapping[str, Finding] | None = None) -> Scan:
        """Every row judged afresh (`known` is a hint the SQL store uses)."""
        self.scan_count += 1
        now = self.clock.now
        findings: dict[str, Finding] = {}
        deadlines: list[float] = []
        for record in self.instances.values():
            row = _instance_row(record, now)
            finding = classify(row, self.rules)
            if finding is not None:
                findings[finding.instance_id] = finding
            left = time_to_threshold(row, self.rules)
            if left is not None:
                deadlines.append(left)
        monitored = sum(
            r.enabled and r.status not in self.rules.ignored_statuses
            for r in self.instances.values()
        )
        return Scan(now, findings, monitored, min(deadlines) if deadlines else None)

    async def set_force_reconnect(self, instance_id: str) -> bool:
        record = self.instances.get(instance_id)
        if record is None:
            return False
        record.force_reconnect = True
        return True

    async def exists(self, instance_id: str) -> bool:
        return instance_id in self.instances

    async def unmonitored(self, instance_ids: Collection[str]) -> dict[str, str]:
        result: dict[str, str] = {}
        for instance_id in instance_ids:
            record = self.instances.get(instance_id)
            enabled, status = (record.enabled, record.status) if record else (None, None)
            why = unmonitored_reason(enabled, status, self.rules)
            if why is not None:
                result[instance_id] = why
        return result

    async def monitored_by_process(self) -> dict[str | None, tuple[int, int]]:
        counts: dict[str | None, tuple[int, int]] = {}
        for r in self.instances.values():
            if r.enabled and r.status not in self.rules.ignored_statuses:
                monitored, judgeable = counts.get(r.process, (0, 0))
                counts[r.process] = (monitored + 1, judgeable + 1)
        return counts

    async def now(self) -> datetime:
        return self.clock.now


def _instance_row(record: InstanceRecord, now: datetime) -> InstanceRow:
    beat = record.last_heartbeat_at
    return InstanceRow(
        instance_id=record.id,
        enabled=record.enabled,
        status=record.status,
        status_age=(now - record.status_changed_at).total_seconds(),
        heartbeat_age=None if beat is None else (now - beat).total_seconds(),
        process=record.process,
    )
