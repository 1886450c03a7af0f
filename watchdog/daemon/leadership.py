"""Several replicas, one actor. The leader holds a lock (PostgreSQL advisory lock, or a
file lock on SQLite); standbys try to take it every cycle. Before every action the
engine asks `fence()`: a paused or partitioned former leader that lost its lock can
never act. Every lead taken is audited (`leader_changed`); only one taken over from
another node alerts (see `SqlNodes.demote_others`).

A fence's proof is a check of the lock sent at most `FENCE_VALIDITY` ago (monotonic):
every action goes out within that bound of the database confirming the lock, and a
process paused for longer (a GC pause, SIGSTOP, swapping) asks again before it acts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from watchdog.core.errors import StoreError
from watchdog.core.model import FLEET, AuditAction, Outcome
from watchdog.core.ports import Ledger, NewAudit

log = logging.getLogger(__name__)

FENCE_VALIDITY = 0.05
"""Seconds a confirmed lock is trusted for, counted from when its check was sent."""


class LeaderLock(Protocol):
    async def acquire(self) -> bool:
        """Try, never wait; True also when this node holds the lock already."""
        ...

    async def held(self) -> bool: ...

    async def release(self) -> None: ...


class NodeRegistry(Protocol):
    """Node rows, stamped with the database clock (never a host's)."""

    async def update(self, node_id: str, role: str, *, good_cycle: bool = False) -> None: ...

    async def demote_others(self, node_id: str) -> bool:
        """Other nodes still marked leader lost the lock: mark them `lost`. True when
        another node led since this one last did (or started): the lead moves."""
        ...


@dataclass(frozen=True, slots=True)
class _Check:
    """A check of the lock: its answer to come, and when it was sent (monotonic)."""

    answer: asyncio.Future[bool]
    sent: float


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    node_id: str
    host: str
    pid: int


class Leadership:
    def __init__(
        self,
        lock: LeaderLock,
        nodes: NodeRegistry,
        ledger: Ledger,
        me: NodeIdentity,
        on_lead: Callable[[], Awaitable[None]] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = lock
        self._monotonic = monotonic
        self._nodes = nodes
        self._ledger = ledger
        self._me = me
        self._on_lead = on_lead
        self.is_leader = False
        self._check: _Check | None = None  # the latest check sent
        self._proven: float | None = None  # when the latest check that confirmed it was sent
        self._stopped = False

    @property
    def node_id(self) -> str:
        return self._me.node_id

    @property
    def role(self) -> str:
        return "leader" if self.is_leader else "standby"

    async def ensure(self) -> bool:
        """Keep or take the lead; True when this node may act this cycle."""
        if self.is_leader:
            if await self._lock.held():
                return True
            self.is_leader = False
            self._proven = None
            log.error("lost the leader lock: acting stops until it is won again")
            await self._nodes.update(self._me.node_id, "standby")
            return False
        if not await self._lock.acquire():
            return False
        await self._take_lead()
        return True

    async def _take_lead(self) -> None:
        """Record the lead and run `on_lead`; this node leads only once all of it
        succeeded. On a failure it stays a standby that holds the lock: the next
        `ensure()` wins the lock again at once and takes the lead again in full (a
        released lock would let another daemon start on the same SQLite file)."""
        moved = await self._nodes.demote_others(self._me.node_id)
        await self._ledger.append(self._lead_audit(moved))
        await self._nodes.update(self._me.node_id, "leader")
        if self._on_lead is not None:
            await self._on_lead()
        self.is_leader = True
        if moved:
            log.warning("this node leads now, taking over from another: %s", self._me.node_id)
        else:
            log.info("this node leads: %s (no other node led since it started)", self._me.node_id)

    def _lead_audit(self, moved: bool) -> NewAudit:
        """`leader_changed` either way; `first` marks a lead that moved from no other
        node (a lone daemon's start), which is recorded but never alerted."""
        detail: dict[str, object] = {
            "node": self._me.node_id,
            "host": self._me.host,
            "pid": self._me.pid,
        }
        if not moved:
            detail["first"] = True
        return NewAudit(FLEET, AuditAction.LEADER_CHANGED, Outcome.OK, detail=detail)

    async def fence(self) -> bool:
        """Still the leader, proven against the lock itself (asked before every action).

        A check sent within `FENCE_VALIDITY` that confirmed the lock is the proof; one
        past half of it starts the next check while it is still used, so a storm of
        actions rarely waits for the lock's connection. Otherwise askers share the check
        in flight (sent within the bound) rather than queue their own behind it on that
        one connection, or send a new one."""
        if not self.is_leader:
            return False
        now = self._monotonic()
        proven = self._proven
        if proven is not None and now - proven <= FENCE_VALIDITY:
            if now - proven > FENCE_VALIDITY / 2:
                self._checking(now)
            return True
        return await asyncio.shield(self._checking(now))

    def _checking(self, now: float) -> asyncio.Future[bool]:
        """The answer of the check in flight, or of a new one when there is none sent
        within the bound."""
        check = self._check
        if check is None or check.answer.done() or now - check.sent > FENCE_VALIDITY:
            check = _Check(asyncio.ensure_future(self._confirm(now)), now)
            check.answer.add_done_callback(_log_failure)
            self._check = check
        return check.answer

    async def _confirm(self, sent: float) -> bool:
        held = await self._lock.held()
        if not held:
            self._proven = None
        elif self._proven is None or sent > self._proven:
            self._proven = sent
        return held

    async def good_cycle(self) -> None:
        """The leader completed a cycle."""
        await self._nodes.update(self._me.node_id, self.role, good_cycle=True)

    async def check_in(self) -> None:
        """A standby is alive: its row stays fresh, but it ran no cycle, so its last good
        cycle (what `status` reads to say who acts) is left alone."""
        await self._nodes.update(self._me.node_id, self.role)

    async def stop(self) -> None:
        """Release the lock and mark this node gone (a clean stop); once, however many
        ways of ending call it."""
        if self._stopped:
            return
        self._stopped = True
        self.is_leader = False
        self._proven = None
        if self._check is not None and not self._check.answer.done():
            self._check.answer.cancel()  # a check started ahead, that no one waits for
        await self._lock.release()
        try:
            await self._nodes.update(self._me.node_id, "gone")
        except StoreError as exc:
            log.warning("could not mark this node gone: %s", exc)


def _log_failure(answer: asyncio.Future[bool]) -> None:
    """A check started ahead has no one waiting for it: its failure is said here."""
    if not answer.cancelled() and answer.exception() is not None:
        log.error("checking the leader lock failed", exc_info=answer.exception())
