"""In-memory fakes of the ports, for tests: one per module.

`FakeClock` moves only when told to; `MemoryInstanceStore` is the application's table
judged by `policy.classify`; `MemoryLedger` keeps the semantics of `SqlLedger` (the
contract suite runs the same tests on both); `MemoryFleetState` holds the brake and the
restarts; `RecordingRecovery` records its calls and fails or hangs on request;
`IdleDaemon` is a health source with no loop behind it. They
import only the standard library and the pure core.
"""

from typing import TYPE_CHECKING

from watchdog.core.model import Action
from watchdog.core.ports import Clock, InstanceStore, Ledger, Recovery
from watchdog.testing.clock import EPOCH, FakeClock
from watchdog.testing.fleet import MemoryFleetState
from watchdog.testing.health import IdleDaemon
from watchdog.testing.instances import InstanceRecord, MemoryInstanceStore
from watchdog.testing.ledger import MemoryLedger
from watchdog.testing.recovery import RecordingRecovery

__all__ = [
    "EPOCH",
    "FakeClock",
    "IdleDaemon",
    "InstanceRecord",
    "MemoryFleetState",
    "MemoryInstanceStore",
    "MemoryLedger",
    "RecordingRecovery",
]

if TYPE_CHECKING:  # mypy checks that the fakes implement the ports
    _clock: Clock = FakeClock()
    _store: InstanceStore = MemoryInstanceStore(FakeClock())
    _ledger: Ledger = MemoryLedger(FakeClock())
    _recovery: Recovery = RecordingRecovery(Action.API_RESTART)
