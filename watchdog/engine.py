"""One cycle of the watchdog: detect → decide → persist intent → act → audit the outcome.

Actions run as tasks bounded by a semaphore, so a hung backend never stalls detection:
the next cycle skips instances whose action is still in flight.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from watchdog.errors import RecoveryError, WatchdogError
from watchdog.model import Action, AuditAction, Incident, IncidentState, Outcome, Target
from watchdog.policy import (
    Act,
    Decision,
    Dismiss,
    EscalationRules,
    Exhaust,
    Open,
    Resolve,
    World,
    decide,
)
from watchdog.ports import Clock, InstanceStore, Ledger, NewAudit, Recovery

# The pure core logs through the standard library; observability routes it to stderr.
log = logging.getLogger("watchdog.engine")


@dataclass(slots=True)
class CycleReport:
    """What one cycle saw and did; the daemon logs it and the tests read it."""

    now: datetime
    unhealthy: int
    opened: int = 0
    acted: int = 0
    exhausted: int = 0
    resolved: int = 0
    actions: list[tuple[str, Action, int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Job:
    """One claimed attempt waiting for its recovery call."""

    incident: Incident
    act: Act
    started_mono: float


class Engine:
    def __init__(
        self,
        instances: InstanceStore,
        ledger: Ledger,
        recoveries: Mapping[Action, Recovery],
        rules: EscalationRules,
        clock: Clock,
        *,
        dry_run: bool = False,
        max_concurrent_actions: int = 16,
        jitter: Callable[[], float] = random.random,
        timeout_margin: float = 2.0,
    ) -> None:
        self._instances = instances
        self._ledger = ledger
        self._recoveries = recoveries
        self._rules = rules
        self._clock = clock
        self._dry_run = dry_run
        self._jitter = jitter
        # The engine's bound is a backstop: adapters time out first, with a clearer message.
        self._timeout_margin = timeout_margin
        self._slots = asyncio.Semaphore(max_concurrent_actions)
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def busy(self) -> frozenset[str]:
        return frozenset(self._busy)

    async def run_cycle(self) -> CycleReport:
        scan = await self._instances.scan()
        mono0 = self._clock.monotonic()
        incidents = await self._ledger.load_open()
        new_ids = [i for i in scan.findings if i not in incidents]
        gone = [i for i in incidents if i not in scan.findings and i not in self._busy]
        unmonitored = await self._instances.unmonitored(gone) if gone else {}
        recent = await self._ledger.last_closed(new_ids) if new_ids else {}
        world = World(
            now=scan.now,
            findings=scan.findings,
            incidents=incidents,
            recent=recent,
            pauses=await self._ledger.load_pauses(scan.now),
            busy=self.busy,
            unmonitored=unmonitored,
        )
        report = CycleReport(now=scan.now, unhealthy=len(scan.findings))
        decisions = decide(self._rules, world, self._jitter)
        if self._dry_run:
            await self._audit_dry_run(decisions, incidents, report)
        else:
            await self._apply(decisions, dict(incidents), report, scan.now, mono0)
        return report

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait for in-flight actions; True when all finished within `timeout`."""
        if not self._tasks:
            return True
        _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        return not pending

    # ----------------------------------------------------------------- applying

    async def _apply(
        self,
        decisions: list[Decision],
        incidents: dict[str, Incident],
        report: CycleReport,
        now: datetime,
        mono0: float,
    ) -> None:
        acts: list[Act] = []
        for decision in decisions:
            match decision:
                case Resolve(incident=incident):
                    await self._resolve(incident, now)
                    report.resolved += 1
                case Dismiss(incident=incident, why=why):
                    detail = {"why": why, "attempts": incident.attempt}
                    await self._ledger.close(
                        incident, IncidentState.DISMISSED, now, "watchdog", detail
                    )
                case Open():
                    incident = await self._ledger.open_incident(
                        decision.finding, decision.carried_attempts, decision.continues, now
                    )
                    incidents[incident.instance_id] = incident
                    report.opened += 1
                case Exhaust(instance_id=instance_id):
                    await self._ledger.exhaust(incidents[instance_id], now)
                    report.exhausted += 1
                case Act():
                    acts.append(decision)
        jobs = [await self._claim(incidents[a.instance_id], a, now) for a in acts]
        self._launch([j for j in jobs if j is not None], now, mono0)
        report.acted = sum(j is not None for j in jobs)
        report.actions = [(j.act.instance_id, j.act.action, j.act.attempt) for j in jobs if j]

    async def _resolve(self, incident: Incident, now: datetime) -> None:
        seconds = (now - incident.opened_at).total_seconds()
        detail = {"time_to_recover": round(seconds, 3), "attempts": incident.attempt}
        await self._ledger.close(incident, IncidentState.RECOVERED, now, "watchdog", detail)

    async def _claim(self, incident: Incident, act: Act, now: datetime) -> _Job | None:
        retry_at = now + timedelta(seconds=act.delay)
        audit_id = await self._ledger.begin_action(incident, act.attempt, act.action, now, retry_at)
        if audit_id is None:
            return None
        return _Job(incident, act, self._clock.monotonic())

    def _launch(self, jobs: list[_Job], now: datetime, mono0: float) -> None:
        """Group jobs that share one recovery call, then run each group as a task."""
        groups: dict[tuple[Action, str], list[_Job]] = defaultdict(list)
        for job in jobs:
            recovery = self._recoveries.get(job.act.action)
            key = _key_or_own(recovery, job)
            groups[(job.act.action, key)].append(job)
            self._busy.add(job.act.instance_id)
        for (action, _key), members in groups.items():
            task = asyncio.create_task(self._run_group(action, members, now, mono0))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_group(
        self, action: Action, members: list[_Job], now: datetime, mono0: float
    ) -> None:
        try:
            async with self._slots:
                outcome, detail = await self._call(action, members[0])
            if len(members) > 1:
                detail = {**detail, "shared_with": [m.act.instance_id for m in members]}
            for job in members:
                await self._finish(job, outcome, detail, now, mono0)
        finally:
            for job in members:
                self._busy.discard(job.act.instance_id)

    async def _call(self, action: Action, job: _Job) -> tuple[Outcome, dict[str, Any]]:
        recovery = self._recoveries.get(action)
        if recovery is None:
            return Outcome.FAILED, {"error": f"no backend configured for {action}"}
        target = Target(job.act.instance_id, job.act.finding.process)
        try:
            async with asyncio.timeout(recovery.timeout + self._timeout_margin):
                result = await recovery.recover(target)
        except TimeoutError:
            limit = recovery.timeout + self._timeout_margin
            return Outcome.FAILED, {"error": f"timed out after {limit:g}s", "transient": True}
        except WatchdogError as exc:
            return Outcome.FAILED, {"error": str(exc), "transient": exc.transient}
        except Exception as exc:  # an adapter bug must still leave an outcome row
            log.exception("recovery %s crashed (a bug in its adapter)", action)
            return Outcome.FAILED, {"error": f"{type(exc).__name__}: {exc}", "unexpected": True}
        return Outcome.OK, dict(result.detail)

    async def _finish(
        self, job: _Job, outcome: Outcome, detail: dict[str, Any], now: datetime, mono0: float
    ) -> None:
        finished_mono = self._clock.monotonic()
        duration = finished_mono - job.started_mono
        finished_at = now + timedelta(seconds=finished_mono - mono0)
        next_at = finished_at + timedelta(seconds=job.act.delay)
        await self._ledger.finish_action(
            job.incident, job.act.attempt, job.act.action, outcome, detail, duration, next_at
        )

    # ------------------------------------------------------------------ dry run

    async def _audit_dry_run(
        self, decisions: list[Decision], incidents: Mapping[str, Incident], report: CycleReport
    ) -> None:
        """Record what would be done with outcome `skipped`, changing nothing else."""
        for decision in decisions:
            row = _dry_run_row(decision, incidents)
            await self._ledger.append(row)
            if isinstance(decision, Act):
                report.acted += 1
                report.actions.append((decision.instance_id, decision.action, decision.attempt))


def _dry_run_row(decision: Decision, incidents: Mapping[str, Incident]) -> NewAudit:
    detail = {"dry_run": True}
    match decision:
        case Dismiss(incident=incident, why=why):
            return NewAudit(
                incident.instance_id,
                AuditAction.DISMISSED,
                Outcome.SKIPPED,
                incident.id,
                str(incident.reason),
                incident.attempt,
                {**detail, "why": why},
            )
        case Resolve(incident=incident):
            return NewAudit(
                incident.instance_id,
                AuditAction.RECOVERED,
                Outcome.SKIPPED,
                incident.id,
                str(incident.reason),
                incident.attempt,
                detail,
            )
        case Open(finding=finding):
            detail_open = {**detail, "age": round(finding.age, 3), "status": finding.status}
            return NewAudit(
                finding.instance_id,
                AuditAction.DETECTED,
                Outcome.SKIPPED,
                None,
                str(finding.reason),
                decision.carried_attempts,
                detail_open,
            )
        case Exhaust(instance_id=instance_id, attempt=attempt):
            incident_id = incidents[instance_id].id if instance_id in incidents else None
            return NewAudit(
                instance_id,
                AuditAction.EXHAUSTED,
                Outcome.SKIPPED,
                incident_id,
                None,
                attempt,
                detail,
            )
        case Act():
            existing = incidents.get(decision.instance_id)
            return NewAudit(
                decision.instance_id,
                AuditAction(str(decision.action)),
                Outcome.SKIPPED,
                existing.id if existing else None,
                str(decision.finding.reason),
                decision.attempt,
                detail,
            )


def _key_or_own(recovery: Recovery | None, job: _Job) -> str:
    """The shared-call key, or the instance's own when the target cannot be keyed."""
    if recovery is None:
        return job.act.instance_id
    try:
        return recovery.key(Target(job.act.instance_id, job.act.finding.process))
    except RecoveryError:
        return f"invalid:{job.act.instance_id}"
