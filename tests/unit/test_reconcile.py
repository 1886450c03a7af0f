"""Intents without an outcome are audited `interrupted` only when no live action owns
them: not this process's own actions in flight, not those of another node still alive."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from watchdog.core.model import Action, Finding, Outcome, Reason
from watchdog.core.ports import Claim, Finished, Opening
from watchdog.daemon.reconcile import IntentReconciler, may_interrupt
from watchdog.testing import FakeClock, MemoryLedger

ME = "n1"


@dataclass
class NodeRow:
    node_id: str
    role: str
    updated_at: datetime | None
    host: str = "elsewhere"
    pid: int = 1


class Fleet:
    def __init__(self) -> None:
        self.rows: dict[str, NodeRow] = {}

    async def all(self) -> list[NodeRow]:
        return list(self.rows.values())


async def intent(ledger: MemoryLedger, instance_id: str, owner: str | None) -> int:
    now = ledger.clock.now
    finding = Finding(instance_id, Reason.STALE_HEARTBEAT, "CONNECTED", 100.0, 90.0)
    (incident,) = await ledger.open_incidents([Opening(finding, 0, None)], now)
    detail = {"node": owner} if owner else None
    claim = Claim(incident, 1, Action.API_RESTART, now + timedelta(seconds=30), detail)
    (intent_id,) = await ledger.begin_actions([claim], now)
    assert intent_id is not None
    return intent_id


def interrupted(ledger: MemoryLedger) -> set[str]:
    return {r.instance_id for r in ledger.rows if r.outcome is Outcome.INTERRUPTED}


def test_the_rule() -> None:
    def alive(node: str) -> bool:
        return node == "n2"

    assert may_interrupt(None, 1, ME, set(), alive)  # written before intents named a node
    assert may_interrupt(ME, 1, ME, {2}, alive)  # ours, and nothing here runs it
    assert not may_interrupt(ME, 2, ME, {2}, alive)  # ours, still in flight
    assert not may_interrupt("n2", 1, ME, set(), alive)  # its node may still record it
    assert may_interrupt("n3", 1, ME, set(), alive)


async def test_only_intents_no_live_action_owns_are_interrupted() -> None:
    clock = FakeClock()
    ledger = MemoryLedger(clock)
    fleet = Fleet()
    live: set[int] = set()
    mono = [0.0]
    reconciler = IntentReconciler(
        ledger,
        fleet.all,
        ME,
        live,
        node_timeout=20.0,
        host="here",
        pid_alive=lambda pid: pid != 666,
        monotonic=lambda: mono[0],
    )
    own_in_flight = await intent(ledger, "own-in-flight", ME)
    live.add(own_in_flight)
    await intent(ledger, "own-dead", ME)  # a previous process of this node
    await intent(ledger, "legacy", None)
    await intent(ledger, "of-n2", "n2")
    await intent(ledger, "of-gone", "n3")
    await intent(ledger, "of-unknown", "n4")
    await intent(ledger, "of-killed-here", "n5")
    await intent(ledger, "of-live-here", "n6")
    fleet.rows = {
        "n2": NodeRow("n2", "standby", clock.now),
        "n3": NodeRow("n3", "gone", clock.now),
        "n5": NodeRow("n5", "leader", clock.now, host="here", pid=666),  # kill -9
        "n6": NodeRow("n6", "standby", clock.now, host="here", pid=7),
    }

    await reconciler.on_lead()
    early = {"own-dead", "legacy", "of-gone", "of-unknown", "of-killed-here"}
    assert interrupted(ledger) == early
    assert len(reconciler.waiting) == 3

    # n2 keeps checking in: its intent waits for its outcome; ours finishes meanwhile.
    mono[0] += 30.0
    fleet.rows["n2"] = NodeRow("n2", "standby", clock.now + timedelta(seconds=30))
    live.discard(own_in_flight)
    incident = (await ledger.load_open())["own-in-flight"]
    ok = Finished(incident, 1, Action.API_RESTART, Outcome.OK, {}, 0.1, clock.now, own_in_flight)
    await ledger.finish_actions([ok])
    fleet.rows["n6"] = NodeRow("n6", "standby", clock.now + timedelta(seconds=30), "here", 7)
    await reconciler.recheck()
    assert interrupted(ledger) == early
    assert len(reconciler.waiting) == 2

    # Their rows stop changing: once one has been still for node_timeout, it is dead.
    mono[0] += 19.0
    await reconciler.recheck()
    assert "of-n2" not in interrupted(ledger)
    mono[0] += 2.0
    await reconciler.recheck()
    assert {"of-n2", "of-live-here"} <= interrupted(ledger)
    assert reconciler.waiting == frozenset()
    assert await ledger.orphan_intents() == []
    outcomes = [r for r in ledger.rows if r.outcome is not Outcome.STARTED and r.intent_id]
    assert len(outcomes) == len({r.intent_id for r in outcomes}) == 8
