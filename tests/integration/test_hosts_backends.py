"""The top rung's knowledge of the processes it restarts (`Hosts`: shared restarts within
the settle, `host_restarted` on co-hosted incidents, external restarts, the blast radius),
driven by the engine against the REAL process backends:

- `CommandRestart` running a tiny process manager made of two shell scripts in tmp_path
  (`restart.sh {process}` gives the process the next PID of a counter, `pid.sh {process}`
  prints it; every restart is appended to `restarts.log`), with and without `pid_command`;
- `SystemdRestart` against the fake `systemctl` of `tests/integration/test_systemd.py`
  (its fixture and helper class are imported, not copied).

Each backend is wrapped in `RetryingRecovery` and `Hosts` is built as `wiring.hosts` builds
it (the generation source is the inner backend). The ledger and the fleet state are
`SqlLedger` and `SqlFleetState` on a real SQLite file, migrated with `migrate.upgrade`.

The instances are a `MemoryInstanceStore`, not an SQLite app table: the watchdog's time
is the scan's `now`, which `SqlInstanceStore` reads from the database clock. A `FakeClock`
could not move it, and the scenarios (a second instance due 30 s into a 60 s settle, a
next attempt deferred by exactly one settle) would need real sleeps. With the memory store
the `FakeClock` is the watchdog's time, every subprocess is really run and awaited, and
every audit row and host record goes through SQLite.

Shown: one restart of a process, with old and new PID from `pid_command`; a second
instance due within the settle shares it (restart.sh not run again); a restart by hand is
audited `host_restarted` by external, once, on every open incident of that process; a
poll while our own restart is in flight sees nothing; the blast radius holds a restart
until `approve`; without `pid_command` only our own restarts are told (by watchdog, no
PIDs); a `systemctl restart` by hand is told with old and new MainPID. Two races found
here are pinned: a restart of ours that ends while the hosts job looks at another process,
and our own restart whose new PID the backend tells only later; neither is external.

The process manager's PIDs start above the largest possible `pid_max` (4194304), so no
process on this machine has them: psutil adds no evidence or start time of a stranger
to the details, which keeps every detail exact.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_systemd import FakeSystemctl
from tests.integration.test_systemd import fake as fake  # the fixture, re-exported
from watchdog.actions.command import CommandRestart
from watchdog.actions.systemd import SystemdRestart
from watchdog.core.model import (
    Action,
    AuditAction,
    AuditRow,
    Generation,
    HostRecord,
    Incident,
    Outcome,
    RestartedBy,
)
from watchdog.core.policy import DetectionRules, EscalationRules, LadderStep
from watchdog.core.ports import AuditQuery, GenerationSource, Recovery
from watchdog.core.safety import SafetyRules
from watchdog.engine.cycle import Engine
from watchdog.engine.guards import Guards
from watchdog.engine.hosts import Hosts
from watchdog.engine.report import CycleReport
from watchdog.resilience import RetryingRecovery
from watchdog.store import migrate
from watchdog.store.database import Database
from watchdog.store.fleet import SqlFleetState
from watchdog.store.ledger import SqlLedger
from watchdog.testing import FakeClock, MemoryInstanceStore

PROC = Action.PROCESS_RESTART
RESTART = AuditAction.PROCESS_RESTART
TOLD = AuditAction.HOST_RESTARTED
SETTLE = 60.0
STALE = 91.0  # just past DetectionRules().stale_after
PROCESS_ONLY = EscalationRules(
    ladder=(LadderStep(PROC, None, SETTLE),), max_attempts=50, backoff_factor=1.0, jitter=0.0
)
NO_BRAKE = SafetyRules(brake_min_unhealthy=100, collateral_fraction=1.0)
FIRST_PID = 9_000_001  # above any pid_max: no such process here

RESTART_SH = """#!/bin/sh
# restart.sh PROCESS: the process gets the next PID; every restart is logged. With a
# file PROCESS.slow, it is still starting when restart.sh exits (its PID reads 0) and
# gets its PID when the test moves PROCESS.pending to PROCESS.pid. With PROCESS.hold,
# restart.sh says so in PROCESS.restarting once the new PID is out, and exits once the
# test creates PROCESS.go (10 s at most).
set -e
dir=$(dirname "$0")
echo "$1" >> "$dir/restarts.log"
pid=$(( $(cat "$dir/next_pid") + 1 ))
echo "$pid" > "$dir/next_pid"
if [ -e "$dir/$1.slow" ]; then
    echo "$pid" > "$dir/$1.pending"
    pid=0
fi
echo "$pid" > "$dir/$1.pid.tmp"
mv "$dir/$1.pid.tmp" "$dir/$1.pid"
if [ -e "$dir/$1.hold" ]; then
    touch "$dir/$1.restarting"
    n=0
    while [ ! -e "$dir/$1.go" ] && [ $n -lt 1000 ]; do sleep 0.01; n=$((n + 1)); done
fi
"""

PID_SH = """#!/bin/sh
# pid.sh PROCESS: its PID, or 0 when it is not running. With a file PROCESS.block, it
# says so in PROCESS.blocked and answers once the test creates PROCESS.go (10 s at most).
dir=$(dirname "$0")
if [ -e "$dir/$1.block" ]; then
    touch "$dir/$1.blocked"
    n=0
    while [ ! -e "$dir/$1.go" ] && [ $n -lt 1000 ]; do sleep 0.01; n=$((n + 1)); done
fi
cat "$dir/$1.pid" 2>/dev/null || echo 0
"""


class ProcessManager:
    """The two scripts and their state, all in one directory."""

    def __init__(self, directory: Path, *processes: str) -> None:
        self.dir = directory
        self.restart_sh = self._script("restart.sh", RESTART_SH)
        self.pid_sh = self._script("pid.sh", PID_SH)
        pid = FIRST_PID
        for pid, process in enumerate(processes, start=FIRST_PID):
            (directory / f"{process}.pid").write_text(f"{pid}\n")
        (directory / "next_pid").write_text(f"{pid}\n")
        (directory / "restarts.log").write_text("")

    def _script(self, name: str, text: str) -> Path:
        path = self.dir / name
        path.write_text(text)
        path.chmod(0o755)
        return path

    def backend(self, *, pid_command: bool = True) -> CommandRestart:
        return CommandRestart(
            [str(self.restart_sh), "{process}"],
            "{id}",
            timeout=10.0,
            pid_command=[str(self.pid_sh), "{process}"] if pid_command else None,
        )

    def pid(self, process: str) -> int:
        return int((self.dir / f"{process}.pid").read_text())

    def restarts(self) -> list[str]:
        """Every run of restart.sh, by whoever, oldest first."""
        return (self.dir / "restarts.log").read_text().split()

    def restart_by_hand(self, process: str) -> None:
        """Someone else restarts the process (an operator, a deploy)."""
        subprocess.run([str(self.restart_sh), process], check=True, timeout=10)

    def flag(self, process: str, suffix: str) -> Path:
        """A switch of the scripts (`.slow`, `.block`, `.go`), or what they say (`.blocked`)."""
        return self.dir / f"{process}.{suffix}"

    def finish_start(self, process: str) -> int:
        """A slow start (see RESTART_SH) is over: the process has its PID."""
        self.flag(process, "pending").replace(self.dir / f"{process}.pid")
        return self.pid(process)

    async def appeared(self, process: str, suffix: str) -> None:
        """Wait until a script says it is waiting (`.blocked`, `.restarting`): a
        condition, with a deadline."""
        async with asyncio.timeout(10):
            while not self.flag(process, suffix).exists():
                await asyncio.sleep(0.01)


@dataclass
class Rig:
    clock: FakeClock
    store: MemoryInstanceStore
    ledger: SqlLedger
    fleet: SqlFleetState
    engine: Engine

    async def cycle(self) -> CycleReport:
        """One cycle, then its actions and their outcomes, as before the daemon's next tick."""
        report = await self.engine.run_cycle()
        assert await self.engine.drain(timeout=20.0)
        return report

    def advance(self, seconds: float, *, beating: tuple[str, ...] = ()) -> None:
        self.clock.advance(seconds)
        for instance_id in beating:
            self.store.beat(instance_id)

    async def rows(self, instance_id: str, action: AuditAction) -> list[AuditRow]:
        query = AuditQuery(instance_id=instance_id, actions=(action,), limit=1000)
        return await self.ledger.audit(query)

    async def outcomes(self, instance_id: str) -> list[tuple[str, dict[str, Any]]]:
        """(outcome, detail) of the instance's process restarts, intents left out."""
        return [
            (str(r.outcome), dict(r.detail))
            for r in await self.rows(instance_id, RESTART)
            if r.outcome is not Outcome.STARTED
        ]

    async def intents(self, instance_id: str) -> list[dict[str, Any]]:
        rows = await self.rows(instance_id, RESTART)
        return [dict(r.detail) for r in rows if r.outcome is Outcome.STARTED]

    async def told(self, instance_id: str) -> list[dict[str, Any]]:
        return [dict(r.detail) for r in await self.rows(instance_id, TOLD)]

    async def incident(self, instance_id: str) -> Incident:
        return (await self.ledger.load_open())[instance_id]

    async def host(self, process: str) -> HostRecord:
        return (await self.fleet.hosts())[process]


@pytest.fixture
async def db(sqlite_url: str) -> AsyncIterator[Database]:
    database = Database(sqlite_url, timeout=5.0)
    try:
        await migrate.upgrade(database)
        yield database
    finally:
        await database.dispose()


def make_rig(db: Database, backend: Recovery, safety: SafetyRules) -> Rig:
    clock = FakeClock(datetime.now(UTC))
    store = MemoryInstanceStore(clock, DetectionRules())
    ledger = SqlLedger(db)
    fleet = SqlFleetState(db, ledger)
    recovery = RetryingRecovery(backend, attempts=3)  # as `wiring.open_recoveries`
    inner = recovery.inner  # as `wiring.hosts`: the backend tells the generations
    source = inner if isinstance(inner, GenerationSource) else None
    hosts = Hosts(ledger, fleet, store, recovery, safety, PROCESS_ONLY.settle_of(PROC), source)
    engine = Engine(
        store,
        ledger,
        {PROC: recovery},
        PROCESS_ONLY,
        clock,
        jitter=lambda: 0.0,
        guards=Guards(ledger, fleet, safety, grace=0.0, startup_grace=False),
        hosts=hosts,
    )
    return Rig(clock, store, ledger, fleet, engine)


def command_detail(pm: ProcessManager, process: str, **pids: int | None) -> dict[str, Any]:
    """The outcome detail of a command restart (no psutil evidence: no such process)."""
    argv = [str(pm.restart_sh), process]
    return {"argv": argv, "exit": 0, "process": process, "stdout": "", **pids}


# --------------------------------------------------------------- command backend


async def test_command_backend_with_pid_command_restarts_once_shares_and_sees_others(
    db: Database, tmp_path: Path
) -> None:
    pm = ProcessManager(tmp_path, "p1", "p2")
    rig = make_rig(db, pm.backend(), NO_BRAKE)
    for instance_id, process in (("a", "p1"), ("b", "p1"), ("c", "p2")):
        rig.store.add(instance_id, process=process)
    rig.advance(30, beating=("b", "c"))
    rig.advance(STALE - 30)  # a stale; b and c 61 s since their last beat

    # (i) a frozen: p1 restarted once, old and new PID from pid.sh.
    before = pm.pid("p1")
    report = await rig.cycle()
    first = rig.clock.now
    assert report.actions == [("a", PROC, 1)]
    assert pm.restarts() == ["p1"]
    ours = pm.pid("p1")
    assert ours not in (before, pm.pid("p2"))
    [(outcome, detail)] = await rig.outcomes("a")
    assert outcome == "ok"
    assert detail == command_detail(pm, "p1", old_pid=before, new_pid=ours)
    a = await rig.incident("a")
    assert await rig.host("p1") == HostRecord(
        "p1", Generation(ours), first, first, RestartedBy.WATCHDOG, a.id
    )
    assert await rig.engine.watch_hosts() == 0  # our own restart is not someone else's
    assert await rig.told("a") == []  # its own outcome row says it

    # (ii) b (and c, on p2) due 30 s later, within p1's settle: b shares a's restart.
    rig.advance(30)
    report = await rig.cycle()
    assert sorted(report.actions) == [("b", PROC, 1), ("c", PROC, 1)]
    assert pm.restarts() == ["p1", "p2"]  # p1 not again; p2 is another process
    assert [i.get("shared") for i in await rig.intents("b")] == [True]
    [(outcome, detail)] = await rig.outcomes("b")
    assert (outcome, detail) == (
        "skipped",
        {
            "reason": "shared",
            "process": "p1",
            "restarted_at": first.isoformat(),
            "by": "watchdog",
            "incident": a.id,
            "settle": SETTLE,
        },
    )
    assert pm.pid("p1") == ours
    p2 = pm.pid("p2")

    # (iii) someone else restarts p1: each open incident on p1 is told once, by external.
    assert await rig.engine.watch_hosts() == 0
    pm.restart_by_hand("p1")
    theirs = pm.pid("p1")
    assert theirs not in (ours, p2)
    rig.advance(5)
    assert await rig.engine.watch_hosts() == 1  # p1; p2 (polled too) is as we left it
    for instance_id in ("a", "b"):
        told = await rig.told(instance_id)
        assert told == [{"process": "p1", "old_pid": ours, "new_pid": theirs, "by": "external"}]
        deferred = rig.clock.now + timedelta(seconds=SETTLE)
        assert (await rig.incident(instance_id)).next_action_at == deferred
    assert await rig.told("c") == []  # p2 was not restarted
    seen = await rig.host("p1")
    assert (seen.generation, seen.restarted_by) == (Generation(theirs), RestartedBy.EXTERNAL)
    assert await rig.engine.watch_hosts() == 0  # seen once, told once
    assert len(await rig.told("a")) == len(await rig.told("b")) == 1
    assert pm.restarts() == ["p1", "p2", "p1"]  # only the one by hand since


async def test_command_backend_restart_held_by_its_blast_radius_until_approved(
    db: Database, tmp_path: Path
) -> None:
    pm = ProcessManager(tmp_path, "p1")
    safety = SafetyRules(brake_min_unhealthy=100, collateral_fraction=0.5)
    rig = make_rig(db, pm.backend(), safety)
    healthy = ("b", "c", "d")
    for instance_id in ("a", *healthy):
        rig.store.add(instance_id, process="p1")
    rig.advance(STALE, beating=healthy)  # a frozen among three healthy of four

    report = await rig.cycle()
    assert report.actions == []
    assert pm.restarts() == []
    held = {
        "reason": "blast_radius",
        "process": "p1",
        "healthy": 3,
        "monitored": 4,
        "collateral_fraction": 0.5,
    }
    [row] = await rig.rows("a", AuditAction.HELD)
    assert (row.outcome, dict(row.detail)) == (Outcome.SKIPPED, held)
    assert (await rig.incident("a")).held == held
    rig.advance(SETTLE + 1, beating=healthy)
    assert (await rig.cycle()).actions == []  # weighed again: still held, audited once
    assert pm.restarts() == []
    assert len(await rig.rows("a", AuditAction.HELD)) == 1

    approved = await rig.ledger.approve("a", "alice")
    assert approved is not None
    assert approved.approved_by == "alice"
    before = pm.pid("p1")
    rig.advance(1, beating=healthy)
    report = await rig.cycle()
    assert report.actions == [("a", PROC, 1)]
    assert pm.restarts() == ["p1"]
    [intent] = await rig.intents("a")
    assert intent == {"target": "p1", "approved_by": "alice"}
    [(outcome, detail)] = await rig.outcomes("a")
    assert (outcome, detail) == (
        "ok",
        command_detail(pm, "p1", old_pid=before, new_pid=pm.pid("p1")),
    )
    spent = await rig.incident("a")
    assert (spent.approved_by, spent.held) == (None, None)
    # The healthy ones have no incident: nothing to tell them, no row.
    for instance_id in healthy:
        assert await rig.told(instance_id) == []


async def test_command_backend_without_pid_command_tells_of_its_own_restarts_only(
    db: Database, tmp_path: Path
) -> None:
    pm = ProcessManager(tmp_path, "p1")
    rig = make_rig(db, pm.backend(pid_command=False), NO_BRAKE)
    rig.store.add("a", process="p1")
    rig.store.add("b", process="p1")
    rig.advance(30, beating=("b",))
    rig.advance(STALE - 30)
    await rig.cycle()  # a: p1 restarted
    first = rig.clock.now
    assert pm.restarts() == ["p1"]
    [(outcome, detail)] = await rig.outcomes("a")
    assert (outcome, detail) == ("ok", command_detail(pm, "p1"))  # no PIDs to tell
    a = await rig.incident("a")
    # Without a PID, the generation is the time the watchdog ran the command.
    assert await rig.host("p1") == HostRecord(
        "p1", Generation(None, first.timestamp()), first, first, RestartedBy.WATCHDOG, a.id
    )
    rig.advance(30)
    await rig.cycle()  # b due within the settle: shares it
    assert pm.restarts() == ["p1"]
    [(outcome, detail)] = await rig.outcomes("b")
    assert (outcome, detail["reason"], detail["by"]) == ("skipped", "shared", "watchdog")
    assert await rig.told("b") == []

    rig.advance(SETTLE - 30 + 1)  # a due again, past the settle; b not yet
    second = rig.clock.now
    report = await rig.cycle()
    assert report.actions == [("a", PROC, 2)]
    assert pm.restarts() == ["p1", "p1"]
    told = {"process": "p1", "old_pid": None, "new_pid": None, "by": "watchdog", "incident": a.id}
    assert await rig.told("b") == [told]
    assert await rig.told("a") == []
    assert (await rig.incident("b")).next_action_at == second + timedelta(seconds=SETTLE)
    assert (await rig.host("p1")).generation == Generation(None, second.timestamp())

    # A restart by anyone else cannot be seen without a pid_command.
    pm.restart_by_hand("p1")
    rig.advance(5)
    assert await rig.engine.watch_hosts() == 0
    assert await rig.told("a") == []
    assert await rig.told("b") == [told]
    assert (await rig.host("p1")).generation == Generation(None, second.timestamp())


async def test_the_hosts_job_polling_during_our_own_restart_sees_no_external_one(
    db: Database, tmp_path: Path
) -> None:
    pm = ProcessManager(tmp_path, "p1")
    rig = make_rig(db, pm.backend(), NO_BRAKE)
    rig.store.add("a", process="p1")
    rig.advance(STALE)
    await rig.cycle()  # p1 restarted for a: its generation is on record
    ours = pm.pid("p1")
    rig.advance(SETTLE + 1)  # a due again
    pm.flag("p1", "hold").touch()  # restart.sh gives p1 its new PID, then waits
    report = await rig.engine.run_cycle()
    try:
        assert report.actions == [("a", PROC, 2)]
        await pm.appeared("p1", "restarting")
        again = pm.pid("p1")
        assert again != ours  # a new generation, while the restart is still in flight
        assert await rig.engine.watch_hosts() == 0  # ... which is ours, not external
    finally:
        pm.flag("p1", "go").touch()
        assert await rig.engine.drain(timeout=20.0)
    assert pm.restarts() == ["p1", "p1"]
    assert await rig.told("a") == []
    assert (await rig.host("p1")).generation == Generation(again)
    assert await rig.engine.watch_hosts() == 0


# ------------------------------------------------ races of the hosts job with our restarts


async def test_a_restart_finishing_while_the_hosts_job_polls_another_is_not_external(
    db: Database, tmp_path: Path
) -> None:
    pm = ProcessManager(tmp_path, "p1", "p2")
    rig = make_rig(db, pm.backend(), NO_BRAKE)
    rig.store.add("a", process="p1")
    rig.store.add("c", process="p2")
    rig.advance(30, beating=("a",))
    rig.advance(STALE - 30)
    await rig.cycle()  # c stale: p2 restarted, its next attempt due a settle later
    rig.advance(30)
    await rig.cycle()  # a stale: p1 restarted
    assert pm.restarts() == ["p2", "p1"]
    assert await rig.engine.watch_hosts() == 0
    ours = pm.pid("p2")
    rig.advance(SETTLE - 30 + 1)  # c due again (a not yet)

    pm.flag("p1", "block").touch()  # the hosts job will wait in pid.sh p1 ...
    watching = asyncio.create_task(rig.engine.watch_hosts())
    try:
        await pm.appeared("p1", "blocked")
        report = await rig.cycle()  # ... while the cycle restarts p2, start to end
        assert report.actions == [("c", PROC, 2)]
        again = pm.pid("p2")
        assert again != ours
    finally:
        pm.flag("p1", "go").touch()
        seen = await watching
    assert pm.restarts() == ["p2", "p1", "p2"]  # nobody but the watchdog restarted p2
    told = await rig.told("c")
    # Fails here: seen == 1 and told == [{"process": "p2", "old_pid": ours,
    # "new_pid": again, "by": "external"}], the watchdog's own restart.
    assert (seen, told) == (0, [])
    assert (await rig.host("p2")).restarted_by is RestartedBy.WATCHDOG


async def test_our_restart_whose_new_pid_shows_late_is_not_taken_for_an_external_one(
    db: Database, tmp_path: Path
) -> None:
    pm = ProcessManager(tmp_path, "p1")
    rig = make_rig(db, pm.backend(), NO_BRAKE)
    rig.store.add("a", process="p1")
    rig.store.add("b", process="p1")
    rig.advance(STALE)
    pm.flag("p1", "slow").touch()  # p1 is still starting when restart.sh returns
    before = pm.pid("p1")
    report = await rig.cycle()  # a and b: one restart of p1
    assert sorted(report.actions) == [("a", PROC, 1), ("b", PROC, 1)]
    [(outcome, detail)] = await rig.outcomes("a")
    assert outcome == "ok"
    assert (detail["old_pid"], detail["new_pid"]) == (before, None)  # pid.sh printed 0
    assert await rig.engine.watch_hosts() == 0  # not running yet: nothing seen
    started = pm.finish_start("p1")  # the restart we made is done: p1 is up
    rig.advance(5)
    seen = await rig.engine.watch_hosts()
    assert pm.restarts() == ["p1"]  # nobody else restarted it
    # Fails here: seen == 1, and a and b are each told {"process": "p1", "old_pid": None,
    # "new_pid": started, "by": "external"} and deferred by another settle.
    assert (seen, await rig.told("a"), await rig.told("b")) == (0, [], [])
    assert (await rig.host("p1")).restarted_by is RestartedBy.WATCHDOG
    assert (await rig.host("p1")).generation.pid == started


# ---------------------------------------------------------------- systemd backend


async def test_systemd_restart_of_the_unit_by_someone_else_is_told_with_main_pids(
    db: Database, fake: FakeSystemctl
) -> None:
    first = fake.add_unit("app.service")
    fake.add_unit("spare.service")  # a second spare main process, for the second restart
    backend = SystemdRestart("{process}", timeout=10.0, systemctl=str(fake.path))
    rig = make_rig(db, backend, NO_BRAKE)
    rig.store.add("a", process="app")  # the unit is app.service
    rig.store.add("b", process="app")
    rig.advance(STALE)

    report = await rig.cycle()  # both frozen: one restart of the unit for both
    assert sorted(report.actions) == [("a", PROC, 1), ("b", PROC, 1)]
    ours = fake.main_pid("app.service")
    assert ours != first
    restarts = [call for call in fake.calls() if "restart" in call]
    assert len(restarts) == 1
    [(outcome, detail)] = await rig.outcomes("a")
    assert outcome == "ok"
    assert (detail["old_pid"], detail["new_pid"], detail["unit"]) == (first, ours, "app.service")
    assert detail["shared_with"] == ["a", "b"]
    host = await rig.host("app.service")
    assert host.generation == Generation(ours, float(fake.started("app.service")))
    assert host.restarted_by is RestartedBy.WATCHDOG
    assert await rig.engine.watch_hosts() == 0  # the unit as our restart left it
    assert await rig.told("a") == await rig.told("b") == []

    # `systemctl restart app.service` by someone else: a new MainPID.
    subprocess.run([str(fake.path), "restart", "app.service"], check=True, timeout=10)
    theirs = fake.main_pid("app.service")
    assert theirs not in (first, ours)
    rig.advance(5)
    assert await rig.engine.watch_hosts() == 1
    told = {"process": "app.service", "old_pid": ours, "new_pid": theirs, "by": "external"}
    for instance_id in ("a", "b"):
        assert await rig.told(instance_id) == [told]
        deferred = rig.clock.now + timedelta(seconds=SETTLE)
        assert (await rig.incident(instance_id)).next_action_at == deferred
    host = await rig.host("app.service")
    assert host.generation == Generation(theirs, float(fake.started("app.service")))
    assert host.restarted_by is RestartedBy.EXTERNAL
    assert await rig.engine.watch_hosts() == 0
    assert len([call for call in fake.calls() if "restart" in call]) == 2
