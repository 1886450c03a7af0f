"""DB_FLAG: ask the instance to reconnect by setting its `force_reconnect` flag.

The application polls the flag; the watchdog only writes it. Store errors are already
WatchdogErrors (transient or not), so they pass through for the engine to record.
"""

from __future__ import annotations

from watchdog.core.errors import InvalidTarget
from watchdog.core.model import Action, ActionResult, Target
from watchdog.core.ports import InstanceStore


class DbFlag:
    """Set the force-reconnect flag of one instance."""

    def __init__(self, store: InstanceStore, timeout: float = 5.0) -> None:
        if timeout <= 0:
            raise ValueError(f"db_flag timeout must be positive, got {timeout!r}")
        self._store = store
        self._timeout = timeout

    @property
    def action(self) -> Action:
        return Action.DB_FLAG

    @property
    def timeout(self) -> float:
        return self._timeout

    def key(self, target: Target) -> str:
        return target.instance_id

    async def recover(self, target: Target) -> ActionResult:
        if not await self._store.set_force_reconnect(target.instance_id):
            # Deleted since the scan: no retry will bring the row back.
            raise InvalidTarget(f"instance {target.instance_id!r} is not in the instances table")
        return ActionResult(detail={"flag": "force_reconnect"})
