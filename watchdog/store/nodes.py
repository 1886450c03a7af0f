"""The `watchdog_nodes` table: every replica that ran against this database (one that
exited stays, `gone`), its role and the last cycle it completed (only a leader runs
cycles). Every time in it is the database's clock, so replicas on hosts whose clocks
differ are compared fairly."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from watchdog.store.database import Database
from watchdog.store.schema import nodes


@dataclass(frozen=True, slots=True)
class Node:
    node_id: str
    host: str
    pid: int
    role: str  # leader | standby | gone
    version: str
    started_at: datetime
    last_good_cycle_at: datetime | None = None
    updated_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "host": self.host,
            "pid": self.pid,
            "role": self.role,
            "version": self.version,
            "started_at": self.started_at.isoformat(),
            "last_good_cycle_at": self.last_good_cycle_at.isoformat()
            if self.last_good_cycle_at
            else None,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


class SqlNodes:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def register(self, node: Node) -> None:
        values = {**_values(node), "updated_at": self._db.now_expr()}
        values["started_at"] = self._db.now_expr()
        async with self._db.begin("register node") as conn:
            await conn.execute(sa.delete(nodes).where(nodes.c.node_id == node.node_id))
            await conn.execute(sa.insert(nodes).values(values))

    async def update(self, node_id: str, role: str, *, good_cycle: bool = False) -> None:
        """Check in (`updated_at`); `good_cycle`: this node also completed a cycle."""
        now = self._db.now_expr()
        values: dict[str, Any] = {"role": role, "updated_at": now}
        if good_cycle:
            values["last_good_cycle_at"] = now
        async with self._db.begin("update node") as conn:
            await conn.execute(sa.update(nodes).where(nodes.c.node_id == node_id).values(values))

    async def demote_others(self, node_id: str) -> bool:
        """Other nodes still marked leader lost the lock: mark them `lost`. True when the
        lead moves from another node (see `_led_since`)."""
        statement = (
            sa.update(nodes)
            .where(nodes.c.role == "leader", nodes.c.node_id != node_id)
            .values(role="lost", updated_at=self._db.now_expr())
        )
        async with self._db.begin("demote old leader") as conn:
            moved = bool((await conn.execute(_led_since(node_id))).scalar_one())
            await conn.execute(statement)
        return moved

    async def all(self) -> list[Node]:
        query = sa.select(nodes).order_by(nodes.c.started_at)
        async with self._db.connect("list nodes") as conn:
            rows = (await conn.execute(query)).all()
        return [
            Node(
                r.node_id,
                r.host,
                r.pid,
                r.role,
                r.version,
                r.started_at,
                r.last_good_cycle_at,
                r.updated_at,
            )
            for r in rows
        ]


def _led_since(node_id: str) -> sa.Select[tuple[bool]]:
    """Whether another node completed a cycle after this one last did (or since it
    started, if it never did). Only a leader completes cycles, so this asks whether
    another node led in the meantime, whatever its role says now: killed (`leader`),
    told of its lost lock (`standby`) or stopped (`gone`). A lone daemon's restart, a
    fleet's first start and a node winning back its own lock find none: every time here
    is the database's."""
    me = nodes.alias("me")
    since = sa.func.coalesce(me.c.last_good_cycle_at, me.c.started_at)
    other = sa.exists().where(
        me.c.node_id == node_id,
        nodes.c.node_id != node_id,
        nodes.c.last_good_cycle_at > since,
    )
    return sa.select(other)


def _values(node: Node) -> dict[str, Any]:
    return {
        "node_id": node.node_id,
        "host": node.host,
        "pid": node.pid,
        "role": node.role,
        "version": node.version,
        "started_at": node.started_at,
        "last_good_cycle_at": node.last_good_cycle_at,
    }
