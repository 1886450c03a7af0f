"""PROCESS_RESTART by running a configured command, e.g. `supervisorctl restart {process}`.

The argv template is run directly, never through a shell, and every value substituted into
it has passed `naming.check_safe_name`, so a hostile instance id cannot inject anything.
The command runs in its own session so that on timeout the whole process group (helpers it
started included) can be killed, its pipes drained and the child reaped. Its output is read
until EOF, so a command that starts something in the background must redirect that
process's stdout and stderr (otherwise the command times out and the group is killed).
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from functools import partial

from watchdog.actions.naming import check_placeholders, resolve_process, substitute
from watchdog.actions.subprocesses import one_line, run_bounded, tail
from watchdog.core.errors import PermanentRecoveryError, RecoveryError, TransientRecoveryError
from watchdog.core.model import Action, ActionResult, Target

EX_TEMPFAIL = 75  # sysexits.h: "temporary failure, try again later"


class CommandRestart:
    """Restart the process hosting an instance by running an argv template.

    Each argv element may contain `{process}` (the target's process, or `default_process`
    with `{id}` filled in) and `{id}` (the instance id).
    """

    def __init__(self, argv: Sequence[str], default_process: str, timeout: float = 30.0) -> None:
        if isinstance(argv, str) or not argv:
            raise ValueError("command argv must be a non-empty list of strings")
        for arg in argv:
            check_placeholders("command argument", arg, ("{process}", "{id}"))
        check_placeholders("default process", default_process, ("{id}",))
        if timeout <= 0:
            raise ValueError(f"command timeout must be positive, got {timeout!r}")
        self._argv = tuple(argv)
        self._default_process = default_process
        self._timeout = timeout

    @property
    def action(self) -> Action:
        return Action.PROCESS_RESTART

    @property
    def timeout(self) -> float:
        return self._timeout

    def key(self, target: Target) -> str:
        # Instances sharing a process share one restart per cycle.
        return resolve_process(self._default_process, target)

    def argv_for(self, target: Target) -> list[str]:
        """The argv that `recover(target)` would run; raises on an unsafe target."""
        values = {"{process}": self.key(target), "{id}": target.instance_id}
        return [substitute(arg, values) for arg in self._argv]

    async def recover(self, target: Target) -> ActionResult:
        process = self.key(target)
        argv = self.argv_for(target)
        code, stdout, stderr = await run_bounded(
            argv,
            fix="check [process] command",
            timeout_error=partial(_timeout_error, argv[0], self._timeout),
            timeout=self._timeout,
        )
        if code != 0:
            raise _exit_error(argv[0], code, stderr)
        detail = {"argv": argv, "exit": 0, "process": process, "stdout": tail(stdout)}
        return ActionResult(detail=detail)


def _timeout_error(program: str, timeout: float, code: int | None) -> RecoveryError:
    if code is None:
        return TransientRecoveryError(
            f"command {program} timed out after {timeout:g}s and was killed"
        )
    # It exited, but something it started in the background holds its output pipes open:
    # a configuration mistake that a retry would only repeat.
    return PermanentRecoveryError(
        f"command {program} exited with {code} but a process it started kept its "
        f"stdout/stderr open past {timeout:g}s and was killed; redirect that process's output"
    )


def _exit_error(program: str, code: int, stderr: bytes) -> RecoveryError:
    if code < 0:
        return PermanentRecoveryError(
            f"command {program} was killed by {_signal_name(-code)}: {one_line(tail(stderr))}"
        )
    message = f"command {program} exited with {code}: {one_line(tail(stderr))}"
    if code == EX_TEMPFAIL:
        return TransientRecoveryError(message)
    return PermanentRecoveryError(message)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # real-time signals have no name
        return f"signal {number}"
