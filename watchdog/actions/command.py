"""PROCESS_RESTART by running a configured command, e.g. `supervisorctl restart {process}`.

The argv template is run directly, never through a shell, and every value substituted into
it has passed `naming.check_safe_name`, so a hostile instance id cannot inject anything.
The command runs in its own session so that on timeout the whole process group (helpers it
started included) can be killed, its pipes drained and the child reaped. Its output is read
until EOF, so a command that starts something in the background must redirect that
process's stdout and stderr (otherwise the command times out and the group is killed).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
from collections.abc import Sequence

from watchdog.actions.naming import check_placeholders, resolve_process, substitute
from watchdog.errors import PermanentRecoveryError, RecoveryError, TransientRecoveryError
from watchdog.model import Action, ActionResult, Target

EX_TEMPFAIL = 75  # sysexits.h: "temporary failure, try again later"
_TAIL = 200  # characters of output kept for messages and the audit detail
_REAP_GRACE = 2.0  # seconds to wait for pipes to close after a kill
# exec failures that say the host is short of resources rather than misconfigured
_TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.EMFILE, errno.ENFILE, errno.ENOMEM})


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
        code, stdout, stderr = await self._run(argv)
        if code != 0:
            raise _exit_error(argv[0], code, stderr)
        detail = {"argv": argv, "exit": 0, "process": process, "stdout": _tail(stdout)}
        return ActionResult(detail=detail)

    async def _run(self, argv: list[str]) -> tuple[int, bytes, bytes]:
        proc = await _spawn(argv)
        finished = False
        try:
            async with asyncio.timeout(self._timeout):
                stdout, stderr = await proc.communicate()
            finished = True
        except TimeoutError:
            raise _timeout_error(argv[0], self._timeout, proc.returncode) from None
        finally:
            # Also runs when the caller cancels us (the engine's own timeout).
            if not finished:
                await _kill_and_reap(proc)
        assert proc.returncode is not None  # communicate() waits for the exit
        return proc.returncode, stdout, stderr


async def _spawn(argv: list[str]) -> asyncio.subprocess.Process:
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # own process group, so a kill reaches its helpers too
        )
    except OSError as exc:
        reason = exc.strerror or str(exc)
        message = f"cannot run {argv[0]}: {reason}; check [process] command"
        if exc.errno in _TRANSIENT_ERRNOS:
            raise TransientRecoveryError(message) from exc
        raise PermanentRecoveryError(message) from exc


async def _kill_and_reap(proc: asyncio.subprocess.Process) -> None:
    """Kill the command's process group, drain its pipes and reap it."""
    # The group id is the child's pid (start_new_session). We only get here before
    # communicate() saw the exit and EOF, so the child or a helper holding its pipes is
    # still in the group, which keeps the id from being reused by another process.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    # communicate() reads both pipes to EOF (closing our ends) and then waits for the exit.
    # The bound covers a helper that escaped the group and still holds a pipe.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_REAP_GRACE):
            await proc.communicate()


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
            f"command {program} was killed by {_signal_name(-code)}: {_one_line(_tail(stderr))}"
        )
    message = f"command {program} exited with {code}: {_one_line(_tail(stderr))}"
    if code == EX_TEMPFAIL:
        return TransientRecoveryError(message)
    return PermanentRecoveryError(message)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # real-time signals have no name
        return f"signal {number}"


def _tail(output: bytes) -> str:
    return output.decode("utf-8", "replace").strip()[-_TAIL:]


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no output)"
