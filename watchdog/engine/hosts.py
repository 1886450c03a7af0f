"""The processes that host instances, as the top rung must know them.

Many instances live in one process, so a process restart is a fleet event: every open
incident of an instance it hosts is told (`host_restarted`, and its next attempt waits the
process-restart settle), whoever restarted it: this watchdog, or anyone else, seen as a new
generation (PID and start) of the process. A process is not restarted again within that
settle: the next asker shares the restart it follows. And a restart that would take down
more healthy instances than `[safety] collateral_fraction` allows is held, until the
operator approves one (`watchdogctl approve`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from watchdog.core.errors import RecoveryError
from watchdog.core.model import (
    ActionResult,
    Finding,
    Generation,
    HostRecord,
    Incident,
    RestartedBy,
    Target,
)
from watchdog.core.ports import FleetState, GenerationSource, InstanceStore, Ledger, Recovery
from watchdog.core.safety import SafetyRules, blast_radius_holds
from watchdog.observability import get_logger

log = get_logger(component="hosts")

COUNT_EVERY = 60.0  # seconds between reads of the monitored rows by process


class Hosts:
    def __init__(
        self,
        ledger: Ledger,
        fleet: FleetState,
        instances: InstanceStore,
        recovery: Recovery,
        rules: SafetyRules,
        settle: float,
        source: GenerationSource | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`recovery`: the process rung (its `key` names the process hosting an instance);
        `source`: its backend, when it can tell a process's generation."""
        self._ledger = ledger
        self._fleet = fleet
        self._instances = instances
        self._recovery = recovery
        self._source = source
        self._rules = rules
        self._settle = timedelta(seconds=settle)
        self._restarting: Counter[str] = Counter()  # restarts in flight here, by process
        self._epoch = 0  # moves at every restart's start and end: a poll racing one is void
        self._records: dict[str, HostRecord] | None = None  # read once a cycle, if needed
        self._unhealthy: Counter[str] | None = None
        self._findings: Mapping[str, Finding] = {}
        # Monitored rows by process: a full pass, so read at most every `COUNT_EVERY`
        # seconds (a held restart is weighed every cycle; its unhealthy share comes from
        # each cycle's findings, the rows per process hardly move).
        self._counts: dict[str | None, tuple[int, int]] | None = None
        self._counted_at = 0.0
        self._monotonic = monotonic
        # Processes whose generation the backend could not tell at the last look: a
        # restart by someone else is not seen meanwhile, and the log says so once.
        self._unreadable: set[str] = set()

    @property
    def settle(self) -> float:
        return self._settle.total_seconds()

    def new_cycle(self, findings: Mapping[str, Finding]) -> None:
        self._records = self._unhealthy = None
        self._findings = findings

    def key(self, instance_id: str, process: str | None) -> str | None:
        """The process hosting an instance, as the backend names it; None: cannot say."""
        try:
            return self._recovery.key(Target(instance_id, process))
        except RecoveryError:
            return None

    # ------------------------------------------------------------- cooldown

    async def shared(
        self, process: str, last_ours: datetime | None, now: datetime
    ) -> dict[str, Any] | None:
        """The restart of `process` within the settle that a restart now would follow
        (`last_ours`: the latest this watchdog started): the shared attempt's detail."""
        record = (await self._hosts()).get(process)
        latest: tuple[datetime, RestartedBy, int | None] | None = None
        if last_ours is not None:
            latest = (last_ours, RestartedBy.WATCHDOG, None)
        theirs = record.restarted_at if record is not None and record.restarted_by else None
        if record is not None and theirs is not None and (latest is None or theirs >= latest[0]):
            latest = (theirs, record.restarted_by or RestartedBy.EXTERNAL, record.incident_id)
        if latest is None or now - latest[0] >= self._settle:
            return None
        at, by, incident = latest
        return {
            "reason": "shared",
            "process": process,
            "restarted_at": at.isoformat(),
            "by": str(by),
            "incident": incident,
            "settle": self.settle,
        }

    # ---------------------------------------------------------- blast radius

    async def blast_radius(self, process: str) -> dict[str, Any] | None:
        """Why a restart of `process` now is held (the detail of `held`), or None."""
        monitored = judgeable = 0
        for value, (rows, judged) in (await self._by_process()).items():
            if self._key_of_value(value) == process:
                monitored, judgeable = monitored + rows, judgeable + judged
        healthy = max(0, judgeable - self._unhealthy_of(process))
        if not blast_radius_holds(healthy, monitored, self._rules):
            return None
        return {
            "reason": "blast_radius",
            "process": process,
            "healthy": healthy,
            "monitored": monitored,
            "collateral_fraction": self._rules.collateral_fraction,
        }

    def _key_of_value(self, value: str | None) -> str | None:
        """The process of rows whose process column is `value`; None when each such row
        is a process of its own (the backend names it by the instance id)."""
        one, other = self.key("a", value), self.key("b", value)
        return one if one == other else None

    def _unhealthy_of(self, process: str) -> int:
        if self._unhealthy is None:
            self._unhealthy = Counter(
                key
                for f in self._findings.values()
                if (key := self.key(f.instance_id, f.process)) is not None
            )
        return self._unhealthy[process]

    async def _by_process(self) -> dict[str | None, tuple[int, int]]:
        now = self._monotonic()
        if self._counts is None or now - self._counted_at >= COUNT_EVERY:
            self._counts = await self._instances.monitored_by_process()
            self._counted_at = now
        return self._counts

    # ------------------------------------------------------------ restarts

    def begin(self, process: str) -> None:
        self._restarting[process] += 1
        self._epoch += 1

    def end(self, process: str) -> None:
        self._restarting[process] -= 1
        if self._restarting[process] <= 0:
            del self._restarting[process]
        self._epoch += 1

    async def restarted(
        self,
        process: str,
        cause: Incident,
        members: Collection[str],
        result: ActionResult,
        at: datetime,
    ) -> None:
        """This watchdog restarted `process` for `cause`: its new generation is recorded,
        and every other open incident it hosts is told and waits the settle."""
        known = (await self._hosts()).get(process)
        generation = result.generation or Generation(None, at.timestamp())
        old_pid = result.detail.get("old_pid", known.generation.pid if known else None)
        await self._fleet.record_host(
            HostRecord(process, generation, at, at, RestartedBy.WATCHDOG, cause.id)
        )
        self._records = None
        detail = {
            "process": process,
            "old_pid": old_pid,
            "new_pid": generation.pid,
            "by": str(RestartedBy.WATCHDOG),
            "incident": cause.id,
        }
        await self._tell(process, detail, at, exclude=members)

    async def poll(self, now: datetime) -> int:
        """Look at the generation of every process hosting an open incident; a new one
        that this watchdog did not make is an external restart. Returns how many."""
        if self._source is None:
            return 0
        processes = {
            key
            for incident in (await self._ledger.load_open()).values()
            if (key := self.key(incident.instance_id, incident.process)) is not None
        }
        records: dict[str, HostRecord] = {}
        read_at: int | None = None  # the epoch `records` were read in
        external = 0
        for process in sorted(processes):
            while read_at != self._epoch:  # a restart of ours began or ended: read again
                read_at = self._epoch
                records = await self._fleet.hosts()
            seen = await self._look(process)
            # In flight, or begun or ended while we looked: what we saw may be ours.
            if seen is None or process in self._restarting or read_at != self._epoch:
                continue
            known = records.get(process)
            if known is None:
                await self._fleet.record_host(HostRecord(process, seen, now))
            elif _ours_seen_late(known, seen):
                await self._fleet.record_host(replace(known, generation=seen, seen_at=now))
            elif not seen.same_as(known.generation):
                await self._external(process, known, seen, now)
                external += 1
        self._records = None
        return external

    async def _look(self, process: str) -> Generation | None:
        """The process's generation now; None while it is restarting here, not running,
        or cannot be told (logged once, until it can be again)."""
        if process in self._restarting:
            return None
        try:
            seen = await self._source.generation(process) if self._source else None
        except RecoveryError as exc:
            if process not in self._unreadable:  # said once, not every interval
                self._unreadable.add(process)
                log.warning("host_unreadable", process=process, error=str(exc))
            return None
        if process in self._unreadable:
            self._unreadable.discard(process)
            log.info("host_readable", process=process)
        return seen

    async def _external(
        self, process: str, known: HostRecord, seen: Generation, now: datetime
    ) -> None:
        await self._fleet.record_host(
            HostRecord(process, seen, now, now, RestartedBy.EXTERNAL, None)
        )
        log.warning(
            "host_restarted_externally",
            process=process,
            old_pid=known.generation.pid,
            new_pid=seen.pid,
        )
        detail = {
            "process": process,
            "old_pid": known.generation.pid,
            "new_pid": seen.pid,
            "by": str(RestartedBy.EXTERNAL),
        }
        await self._tell(process, detail, now, exclude=())

    async def _tell(
        self, process: str, detail: Mapping[str, Any], at: datetime, exclude: Collection[str]
    ) -> None:
        hosted = [
            incident
            for incident in (await self._ledger.load_open()).values()
            if incident.instance_id not in exclude
            and self.key(incident.instance_id, incident.process) == process
        ]
        await self._ledger.host_restarted_all(hosted, at + self._settle, at, detail)

    async def _hosts(self) -> dict[str, HostRecord]:
        if self._records is None:
            self._records = await self._fleet.hosts()
        return self._records


def _ours_seen_late(known: HostRecord, seen: Generation) -> bool:
    """Our own restart, whose new PID the backend could not tell right after it (still
    starting): the first PID seen since is that restart's, not someone else's."""
    return (
        known.restarted_by is RestartedBy.WATCHDOG
        and known.generation.pid is None
        and seen.pid is not None
    )
