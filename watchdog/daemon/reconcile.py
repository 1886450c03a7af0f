"""Intents without an outcome: an action whose intent row (`started`) was written but
whose outcome never was, because the node acting died. A new leader audits them
`interrupted`, but only those no live action owns:

* an intent this process owns is live while its call or its outcome is in flight here
  (a leader that lost and regained its lock still finishes its own actions);
* an intent of another node waits while that node is alive: its outcome may still come
  (held through an outage, or of a call that outlived its lock). A node is taken for
  dead when its row says it stopped (`gone`) or is missing, when it ran on this host
  and its process is gone, or when its row has not changed for `node_timeout` seconds
  while this node watched (measured on our own clock, so no two hosts' clocks are
  compared);
* an intent written before intents named their node is interrupted at once.

The database holds each intent to one outcome, so an `interrupted` racing a late outcome
leaves exactly one of them on record.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import datetime
from typing import Protocol

import psutil

from watchdog.core.model import AuditRow
from watchdog.core.ports import Ledger
from watchdog.observability import get_logger

log = get_logger(component="reconcile")

NOTE = "the watchdog stopped before the outcome"


class NodeRow(Protocol):
    @property
    def node_id(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def pid(self) -> int: ...

    @property
    def role(self) -> str: ...

    @property
    def updated_at(self) -> datetime | None: ...


def may_interrupt(
    owner: str | None,
    intent_id: int,
    me: str,
    live: Collection[int],
    alive: Callable[[str], bool],
) -> bool:
    """Whether no live action can own this intent any more (the rule, pure)."""
    if owner is None:
        return True
    if owner == me:
        return intent_id not in live
    return not alive(owner)


class IntentReconciler:
    def __init__(
        self,
        ledger: Ledger,
        nodes: Callable[[], Awaitable[Sequence[NodeRow]]],
        me: str,
        live: Collection[int],
        *,
        node_timeout: float,
        host: str | None = None,
        pid_alive: Callable[[int], bool] = psutil.pid_exists,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ledger = ledger
        self._nodes = nodes
        self._me = me
        self._live = live  # the engine's set of intents in flight here, read as it changes
        self._node_timeout = node_timeout
        self._host = host  # nodes on this host are known dead as soon as their process is
        self._pid_alive = pid_alive
        self._monotonic = monotonic
        self._waiting: set[int] = set()
        # node → (its row's last updated_at, when we first saw that value: monotonic)
        self._seen: dict[str, tuple[datetime | None, float]] = {}

    @property
    def waiting(self) -> frozenset[int]:
        """Intents left for later: their owner may still record the outcome."""
        return frozenset(self._waiting)

    async def on_lead(self) -> list[AuditRow]:
        """Taking the lead: every intent without an outcome."""
        self._seen.clear()
        return await self._settle(await self._ledger.orphan_intents())

    async def recheck(self) -> list[AuditRow]:
        """The intents left waiting, again (cheap when none is)."""
        if not self._waiting:
            return []
        return await self._settle(await self._ledger.orphan_intents(among=self._waiting))

    async def _settle(self, orphans: Sequence[AuditRow]) -> list[AuditRow]:
        owners = {_owner(row) for row in orphans} - {None, self._me}
        if owners:
            self._watch(await self._nodes())
        dead = [
            row
            for row in orphans
            if may_interrupt(_owner(row), row.id, self._me, self._live, self._alive)
        ]
        interrupted = {row.id for row in dead}
        waiting = {row.id: _owner(row) for row in orphans if row.id not in interrupted}
        written = await self._ledger.interrupt(dead, NOTE)
        if written:
            log.warning("interrupted_actions_reconciled", count=len(written))
        others = {i: owner for i, owner in waiting.items() if owner != self._me}
        if others.keys() - self._waiting:  # said once, when new ones are left waiting
            nodes = sorted({str(owner) for owner in others.values()})
            log.info("intents_wait_for_their_node", count=len(others), nodes=nodes)
        self._waiting = set(waiting)
        return written

    def _watch(self, rows: Sequence[NodeRow]) -> None:
        now = self._monotonic()
        current = {
            row.node_id: row
            for row in rows
            if row.role != "gone" and (row.host != self._host or self._pid_alive(row.pid))
        }
        self._seen = {
            node_id: (
                self._seen[node_id]
                if node_id in self._seen and self._seen[node_id][0] == row.updated_at
                else (row.updated_at, now)
            )
            for node_id, row in current.items()
        }

    def _alive(self, node_id: str) -> bool:
        seen = self._seen.get(node_id)
        return seen is not None and self._monotonic() - seen[1] < self._node_timeout


def _owner(row: AuditRow) -> str | None:
    owner = row.detail.get("node")
    return owner if isinstance(owner, str) else None
