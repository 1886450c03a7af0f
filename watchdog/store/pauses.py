"""Operators' pauses, each command audited once: one instance, several (one row naming
them all), or a fleet pause by selector (`--process`, `--match`, `--all`), which holds
the instances it covers, also those that appear while it lasts. `SqlLedger` is one."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from watchdog.core.model import FLEET, AuditAction, Outcome, Pause, Selector
from watchdog.core.ports import NewAudit, paused_audit
from watchdog.store.audit import AuditTrail
from watchdog.store.schema import fleet_pauses, pauses
from watchdog.store.state import bump


class PauseWrites(AuditTrail):
    async def pause(self, pause: Pause, now: datetime) -> None:
        await self.pause_all([pause], now)

    async def pause_all(self, held: Sequence[Pause], now: datetime) -> None:
        """Pause instances (sharing until, reason and actor) or set one fleet pause; one
        audit row. A pause already there for the same target is replaced."""
        if not held:
            return
        first = held[0]
        spec = paused_audit(held)
        async with self._db.begin("pause") as conn:
            if first.selector is not None:
                await _set_fleet_pause(conn, first, now)
            else:
                ids = [p.instance_id for p in held]
                await conn.execute(sa.delete(pauses).where(pauses.c.instance_id.in_(ids)))
                await conn.execute(
                    sa.insert(pauses),
                    [
                        {
                            "instance_id": p.instance_id,
                            "until": p.until,
                            "reason": p.reason,
                            "actor": p.actor,
                            "created_at": now,
                        }
                        for p in held
                    ],
                )
            row = await self.insert_audit(conn, now, spec)
            await bump(conn)
        self._emit(row)

    async def resume(self, instance_id: str, actor: str) -> bool:
        return bool(await self.resume_all([instance_id], actor))

    async def resume_all(self, instance_ids: Sequence[str], actor: str) -> list[str]:
        """Lift the pauses in force of these instances (an expired one is just tidied
        away); one audit row naming those lifted. Returns them."""
        async with self._db.begin("resume instances") as conn:
            now = await self._db.read_now(conn)
            mine = pauses.c.instance_id.in_(list(instance_ids))
            lifted = (
                (
                    await conn.execute(
                        sa.delete(pauses)
                        .where(mine, pauses.c.until > now)
                        .returning(pauses.c.instance_id)
                    )
                )
                .scalars()
                .all()
            )
            await conn.execute(sa.delete(pauses).where(mine))
            if not lifted:
                return []
            ordered = [i for i in instance_ids if i in set(lifted)]
            detail: dict[str, Any] = {"ids": ordered} if len(ordered) > 1 else {}
            target = ordered[0] if len(ordered) == 1 else FLEET
            spec = NewAudit(target, AuditAction.RESUMED, Outcome.OK, detail=detail, actor=actor)
            row = await self.insert_audit(conn, now, spec)
            await bump(conn)
        self._emit(row)
        return ordered

    async def resume_fleet(self, selector: Selector, actor: str) -> bool:
        """Lift the fleet pause of `selector` in force; audited once."""
        same = sa.and_(
            fleet_pauses.c.kind == str(selector.kind), fleet_pauses.c.pattern == selector.pattern
        )
        async with self._db.begin("resume fleet pause") as conn:
            now = await self._db.read_now(conn)
            found = await conn.execute(
                sa.delete(fleet_pauses).where(same, fleet_pauses.c.until > now)
            )
            await conn.execute(sa.delete(fleet_pauses).where(same))
            if found.rowcount == 0:
                return False
            detail = {"selector": selector.as_json()}
            spec = NewAudit(FLEET, AuditAction.RESUMED, Outcome.OK, detail=detail, actor=actor)
            row = await self.insert_audit(conn, now, spec)
            await bump(conn)
        self._emit(row)
        return True


async def _set_fleet_pause(conn: Any, pause: Pause, now: datetime) -> None:
    selector = pause.selector
    assert selector is not None
    same = sa.and_(
        fleet_pauses.c.kind == str(selector.kind), fleet_pauses.c.pattern == selector.pattern
    )
    await conn.execute(sa.delete(fleet_pauses).where(same))
    values = {
        "kind": str(selector.kind),
        "pattern": selector.pattern,
        "until": pause.until,
        "reason": pause.reason,
        "actor": pause.actor,
        "created_at": now,
    }
    await conn.execute(sa.insert(fleet_pauses).values(values))
