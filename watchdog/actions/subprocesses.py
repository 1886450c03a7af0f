"""Running a backend's program (a restart command, systemctl) without leaving anything behind.

The program runs directly, never through a shell, with stdin from /dev/null and its stdout
and stderr piped to us. It gets its own session, so it and every helper it starts share one
process group whose id is the program's pid. When it outlives its time, or the caller is
cancelled (the engine's own timeout), the whole group is killed with SIGKILL, the pipes are
drained to EOF (closing our ends) and the child is reaped: no stray process, open pipe or
zombie outlives the call. Output is read until EOF, so a helper that the program leaves
running in the background must not keep its stdout or stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
from collections.abc import Callable, Sequence

from watchdog.core.errors import (
    PermanentRecoveryError,
    RecoveryError,
    TransientRecoveryError,
    squeeze,
)

TAIL = 200  # characters of output kept for messages and audit details
REAP_GRACE = 2.0  # seconds to wait for pipes to close after a kill
# exec failures that say the host is short of resources rather than misconfigured
TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.EMFILE, errno.ENFILE, errno.ENOMEM})


async def spawn(argv: Sequence[str], fix: str) -> asyncio.subprocess.Process:
    """Start `argv` in its own session; an exec failure names `fix` as the remedy.

    Raises TransientRecoveryError when the host is short of resources (EAGAIN, EMFILE,
    ENFILE, ENOMEM), PermanentRecoveryError for any other OSError (missing program, no
    permission...).
    """
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,  # never a tty: no password prompt, no pager
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # own process group, so a kill reaches its helpers too
        )
    except OSError as exc:
        reason = exc.strerror or str(exc)
        message = f"cannot run {argv[0]}: {reason}; {fix}"
        if exc.errno in TRANSIENT_ERRNOS:
            raise TransientRecoveryError(message) from exc
        raise PermanentRecoveryError(message) from exc


async def kill_and_reap(proc: asyncio.subprocess.Process) -> None:
    """Kill the process group of `proc` (started by `spawn`), drain its pipes and reap it."""
    # The group id is the child's pid (start_new_session). We only get here before
    # communicate() saw the exit and EOF, so the child or a helper holding its pipes is
    # still in the group, which keeps the id from being reused by another process.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    # communicate() reads both pipes to EOF (closing our ends) and then waits for the exit.
    # The bound covers a helper that escaped the group and still holds a pipe.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(REAP_GRACE):
            await proc.communicate()


async def run_bounded(
    argv: Sequence[str],
    *,
    fix: str,
    timeout_error: Callable[[int | None], RecoveryError],
    timeout: float | None = None,
    deadline: float | None = None,
) -> tuple[int, bytes, bytes]:
    """Run `argv` (see `spawn`) to its exit and the EOF of its output: (code, stdout, stderr).

    The run is bounded either by `timeout` seconds from the start or by `deadline` (event
    loop time); exactly one must be given. When the bound passes, the process group is
    killed and reaped and `timeout_error(returncode)` is raised; the return code is None
    unless the program had exited while something it started held its pipes open. A caller
    that is cancelled kills and reaps the group too.
    """
    if (timeout is None) == (deadline is None):
        raise ValueError("give exactly one of timeout and deadline")
    proc = await spawn(argv, fix)
    finished = False
    try:
        bound = asyncio.timeout(timeout) if deadline is None else asyncio.timeout_at(deadline)
        async with bound:
            stdout, stderr = await proc.communicate()
        finished = True
    except TimeoutError:
        raise timeout_error(proc.returncode) from None
    finally:
        # Also runs when the caller cancels us (the engine's own timeout).
        if not finished:
            await kill_and_reap(proc)
    assert proc.returncode is not None  # communicate() waits for the exit
    return proc.returncode, stdout, stderr


def tail(output: bytes) -> str:
    """The last `TAIL` characters of `output`, decoded and stripped."""
    return output.decode("utf-8", "replace").strip()[-TAIL:]


def one_line(text: str) -> str:
    """`text` with its white space folded onto one line; "(no output)" when empty."""
    return squeeze(text) or "(no output)"
