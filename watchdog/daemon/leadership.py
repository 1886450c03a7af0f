"""Several replicas, one actor. The leader holds a lock (PostgreSQL advisory lock, or a
file lock on SQLite); standbys try to take it every cycle. Before every action the
engine asks `fence()`: a paused or partitioned former leader that lost its lock can
never act. Every lead taken is audited (`leader_changed`); only one taken over from
another node alerts (see `SqlNodes.demote_others`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from watchdog.core.errors import StoreError
from watchdog.core.model import FLEET, AuditAction, Outcome
from watchdog.core.ports import Ledger, NewAudit

log = logging.getLogger(__name__)


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
    ) -> None:
        self._lock = lock
        self._nodes = nodes
        self._ledger = ledger
        self._me = me
        self._on_lead = on_lead
        self.is_leader = False
        self._fence_check: asyncio.Future[bool] | None = None
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

        Askers who come while a check is in flight share it rather than queue their own
        behind it on the lock's one connection: its answer is at most one round trip old,
        and a storm of concurrent actions costs one query per round trip, not one each."""
        if not self.is_leader:
            return False
        if self._fence_check is None or self._fence_check.done():
            self._fence_check = asyncio.ensure_future(self._lock.held())
        return await asyncio.shield(self._fence_check)

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
        await self._lock.release()
        try:
            await self._nodes.update(self._me.node_id, "gone")
        except StoreError as exc:
            log.warning("could not mark this node gone: %s", exc)
