"""A recovery backend that records its calls and fails or hangs on request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Literal

from watchdog.core.errors import InvalidTarget, TransientRecoveryError
from watchdog.core.model import (
    Action,
    ActionResult,
    Generation,
    Target,
)

if TYPE_CHECKING:
    pass


class RecordingRecovery:
    """A recovery rung that records every `Target` it is called with in `calls`.

    Instances named in `fail` get a `TransientRecoveryError`; those in `hang` wait
    forever (until the engine's `timeout` cancels them); any other call succeeds and then
    runs `effect(target)`, e.g. to make the instance beat again. With `key_by="process"`
    targets sharing a process share one call, and a target without a process is a
    `PermanentRecoveryError`.
    """

    def __init__(
        self,
        action: Action,
        *,
        timeout: float = 5.0,
        key_by: Literal["instance", "process"] = "instance",
        fail: Collection[str] = (),
        hang: Collection[str] = (),
        effect: Callable[[Target], None] | None = None,
    ) -> None:
        self._action = action
        self._timeout = timeout
        self.key_by = key_by
        self.fail = set(fail)
        self.hang = set(hang)
        self.effect = effect
        self.calls: list[Target] = []
        # The PID running each process (key); a call gives it a new one, as a restart
        # does. Change one to play a restart made by someone else.
        self.pids: dict[str, int] = {}

    @property
    def action(self) -> Action:
        return self._action

    @property
    def timeout(self) -> float:
        return self._timeout

    def key(self, target: Target) -> str:
        if self.key_by == "instance":
            return target.instance_id
        if target.process is None:  # as the supervisor backend says it
            raise InvalidTarget(f"instance {target.instance_id!r} has no process")
        return target.process

    async def recover(self, target: Target) -> ActionResult:
        self.calls.append(target)
        key = self.key(target)
        if target.instance_id in self.hang:
            await asyncio.Event().wait()  # never set: only a timeout ends this
        if target.instance_id in self.fail:
            raise TransientRecoveryError(f"{self._action} refused for {target.instance_id!r}")
        if self.effect is not None:
            self.effect(target)
        detail: dict[str, object] = {"fake": str(self._action), "key": key}
        if self._action is not Action.PROCESS_RESTART:
            return ActionResult(detail=detail)
        old = self.pids.get(key, _FIRST_PID)
        self.pids[key] = old + 1
        detail.update(old_pid=old, new_pid=old + 1)
        return ActionResult(detail=detail, generation=Generation(old + 1))

    async def generation(self, name: str) -> Generation | None:
        """As a process backend tells it (`GenerationSource`)."""
        return Generation(self.pids.get(name, _FIRST_PID))


_FIRST_PID = 1000
