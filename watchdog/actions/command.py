"""PROCESS_RESTART by running a configured command, e.g. `supervisorctl restart {process}`.

The argv template is run directly, never through a shell, and every value substituted into
it has passed `naming.check_safe_name`, so a hostile instance id cannot inject anything.
The command runs in its own session so that on timeout the whole process group (helpers it
started included) can be killed, its pipes drained and the child reaped. Its output is read
until EOF, so a command that starts something in the background must redirect that
process's stdout and stderr (otherwise the command times out and the group is killed).

An optional `pid_command` (e.g. `pm2 pid {process}`) prints the process's PID: run before
and after the restart it puts the old and new PID into the audit detail, and it tells the
process's generation (the PID and, when the process is visible here, its start time).
Without it the backend cannot tell a generation, and the engine takes the time it last ran
the command as the process's generation.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from functools import partial
from typing import Any

from watchdog.actions.evidence import local_generation, process_facts, restart_evidence
from watchdog.actions.naming import (
    check_placeholders,
    check_safe_name,
    resolve_process,
    substitute,
)
from watchdog.actions.subprocesses import one_line, run_bounded, tail
from watchdog.core.errors import PermanentRecoveryError, RecoveryError, TransientRecoveryError
from watchdog.core.model import Action, ActionResult, Generation, Target

EX_TEMPFAIL = 75  # sysexits.h: "temporary failure, try again later"
_PLACEHOLDERS = ("{process}", "{id}")
_PID_COMMAND = "[process] pid_command"


class CommandRestart:
    """Restart the process hosting an instance by running an argv template.

    Each argv element may contain `{process}` (the target's process, or `default_process`
    with `{id}` filled in) and `{id}` (the instance id); so may each element of
    `pid_command`, the argv that prints the process's PID (see the module docstring).
    `timeout` bounds a whole recovery: the PID before, the restart and the PID after.
    """

    def __init__(
        self,
        argv: Sequence[str],
        default_process: str,
        timeout: float = 30.0,
        pid_command: Sequence[str] | None = None,
    ) -> None:
        self._argv = _checked_argv("command", argv)
        self._pid_argv = None if pid_command is None else _checked_argv("pid_command", pid_command)
        check_placeholders("default process", default_process, ("{id}",))
        if timeout <= 0:
            raise ValueError(f"command timeout must be positive, got {timeout!r}")
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
        """Run the command; with a `pid_command`, read the PID before and after it too.

        A PID that cannot be read before the restart fails the recovery (nothing was done
        yet); one that cannot be read after it does not (the restart was made): the detail
        then has `new_pid` None and the reason in `pid_error`.
        """
        process = self.key(target)
        argv = self.argv_for(target)
        deadline = asyncio.get_running_loop().time() + self._timeout
        old_pid = await self._pid(process, target.instance_id, deadline)
        old_facts = process_facts(old_pid)
        code, stdout, stderr = await run_bounded(
            argv,
            fix="check [process] command",
            timeout_error=partial(_timeout_error, f"command {argv[0]}", self._timeout),
            deadline=deadline,
        )
        if code != 0:
            raise _exit_error(f"command {argv[0]}", code, stderr)
        detail: dict[str, Any] = {
            "argv": argv,
            "exit": 0,
            "process": process,
            "stdout": tail(stdout),
        }
        if self._pid_argv is None:
            return ActionResult(detail=detail)
        try:
            new_pid = await self._pid(process, target.instance_id, deadline)
        except RecoveryError as exc:
            new_pid = None
            detail["pid_error"] = str(exc)
        detail.update(restart_evidence(old_pid, old_facts, new_pid))
        return ActionResult(detail=detail, generation=local_generation(new_pid))

    async def generation(self, name: str) -> Generation | None:
        """The PID `pid_command` prints for process `name` (a `key()` result), with the
        process's start time when it is visible here; None when it prints 0 or nothing.

        Always None without a `pid_command`: the engine then takes the time it last ran
        the command as the generation. Raises a RecoveryError when `pid_command` cannot be
        run, fails, prints something else than a PID or outlives `timeout`."""
        process = check_safe_name("process name", name)
        deadline = asyncio.get_running_loop().time() + self._timeout
        return local_generation(await self._pid(process, process, deadline))

    def pid_argv_for(self, process: str, instance_id: str) -> list[str] | None:
        """The `pid_command` argv for a process (None when none is configured)."""
        if self._pid_argv is None:
            return None
        values = {"{process}": process, "{id}": instance_id}
        return [substitute(arg, values) for arg in self._pid_argv]

    async def _pid(self, process: str, instance_id: str, deadline: float) -> int | None:
        """Run `pid_command` until `deadline` (loop time) and read its PID; None when it
        prints 0 or nothing, or when no `pid_command` is configured."""
        argv = self.pid_argv_for(process, instance_id)
        if argv is None:
            return None
        what = f"{_PID_COMMAND} {argv[0]}"
        code, stdout, stderr = await run_bounded(
            argv,
            fix=f"check {_PID_COMMAND}",
            timeout_error=partial(_timeout_error, what, self._timeout),
            deadline=deadline,
        )
        if code != 0:
            raise _exit_error(what, code, stderr)
        return _parse_pid(what, stdout)


def _checked_argv(key: str, argv: Sequence[str]) -> tuple[str, ...]:
    """`argv` as a tuple, once it is a non-empty list of strings with known placeholders."""
    if isinstance(argv, str) or not argv or not all(isinstance(arg, str) for arg in argv):
        raise ValueError(f"{key} argv must be a non-empty list of strings")
    for arg in argv:
        check_placeholders(f"{key} argument", arg, _PLACEHOLDERS)
    return tuple(argv)


def _parse_pid(what: str, stdout: bytes) -> int | None:
    """The last non-empty line of `stdout` as a PID; None for 0 or no output."""
    lines = [line.strip() for line in stdout.decode("utf-8", "replace").splitlines()]
    last = next((line for line in reversed(lines) if line), "")
    if not last:
        return None
    if not (last.isascii() and last.isdigit()):
        raise PermanentRecoveryError(
            f"{what} printed {one_line(last)[-80:]!r} where a PID was expected; it must "
            "print the process's PID on its last line (0 or nothing when not running)"
        )
    return int(last) or None


def _timeout_error(what: str, timeout: float, code: int | None) -> RecoveryError:
    """`what` names the program: `command /usr/bin/pm2`, `[process] pid_command pm2`."""
    if code is None:
        return TransientRecoveryError(f"{what} timed out after {timeout:g}s and was killed")
    # It exited, but something it started in the background holds its output pipes open:
    # a configuration mistake that a retry would only repeat.
    return PermanentRecoveryError(
        f"{what} exited with {code} but a process it started kept its "
        f"stdout/stderr open past {timeout:g}s and was killed; redirect that process's output"
    )


def _exit_error(what: str, code: int, stderr: bytes) -> RecoveryError:
    if code < 0:
        return PermanentRecoveryError(
            f"{what} was killed by {_signal_name(-code)}: {one_line(tail(stderr))}"
        )
    message = f"{what} exited with {code}: {one_line(tail(stderr))}"
    if code == EX_TEMPFAIL:
        return TransientRecoveryError(message)
    return PermanentRecoveryError(message)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # real-time signals have no name
        return f"signal {number}"
