"""PROCESS_RESTART through supervisord's XML-RPC interface.

supervisord has no restart call, so a restart is: read the program's pid and state, wake it
with SIGCONT when it is SIGSTOPped (a stopped process cannot act on SIGTERM), stop it without
waiting inside supervisord, poll until it is down (sending SIGKILL ourselves after `stop_wait`
seconds, or at once when it is still stopped, so a frozen program never costs its full
`stopwaitsecs`), start it and check that a new pid is RUNNING. The new process's generation
is its pid and the start time supervisord reports (`generation()` reads it at any time).

The XML-RPC client is blocking, so every call runs in a worker thread with a socket timeout,
and every recovery uses a fresh proxy and connection (supervisor's transport keeps reusing a
broken connection after an error), closed afterwards. When the engine cancels a recovery the
socket is shut down, which releases the worker thread at once.

The server URL is `unix:///path/to/supervisor.sock` or `http://[user:password@]host:port`;
the credentials never appear in a message or an audit detail.
"""

from __future__ import annotations

import asyncio

import psutil
from supervisor.xmlrpc import Faults

from watchdog.actions.evidence import process_facts, restart_evidence
from watchdog.actions.naming import (
    check_placeholders,
    check_safe_name,
    placeholders,
    resolve_process,
    substitute,
)
from watchdog.actions.supervisor_rpc import ProcessInfo, ServerUrl, Session
from watchdog.core.errors import (
    InvalidTarget,
    RecoveryError,
    TransientRecoveryError,
)
from watchdog.core.model import Action, ActionResult, Generation, Target

_POLL = 0.1  # seconds between getProcessInfo calls while waiting for a stop
_KILL_GRACE = 5.0  # seconds a program may take to go down after our SIGKILL
_LOCATE_TIMEOUT = 5.0  # `watchdogctl show` should not hang on a stuck supervisord
_STOPPED_STATES = frozenset({"STOPPED", "EXITED", "FATAL", "UNKNOWN"})


class SupervisorRestart:
    """Restart the supervisord program hosting an instance.

    `program_template` names the program (`name` or `group:name`). Without `{process}` it
    works like the command backend's default process: the target's own process when known,
    else the template with `{id}` filled in. With `{process}` (e.g. `workers:{process}`) the
    target's process is substituted, and a target without one is refused.
    """

    def __init__(
        self,
        server_url: str,
        program_template: str,
        timeout: float = 30.0,
        stop_wait: float = 10.0,
    ) -> None:
        check_placeholders("supervisor program", program_template, ("{process}", "{id}"))
        if timeout <= 0:
            raise ValueError(f"supervisor timeout must be positive, got {timeout!r}")
        if not 0 < stop_wait < timeout:
            raise ValueError(
                f"supervisor stop_wait must be positive and less than the timeout "
                f"({timeout:g}s), got {stop_wait!r}"
            )
        self._url = ServerUrl.parse(server_url)
        self._template = program_template
        self._uses_process = "{process}" in placeholders(program_template)
        self._timeout = timeout
        self._stop_wait = stop_wait

    @property
    def action(self) -> Action:
        return Action.PROCESS_RESTART

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def server(self) -> str:
        """The server URL without credentials, safe to show."""
        return self._url.display

    def key(self, target: Target) -> str:
        """The program name; instances sharing a program share one restart per cycle."""
        if not self._uses_process:
            return resolve_process(self._template, target)
        instance_id = check_safe_name("instance id", target.instance_id)
        if not target.process:
            raise InvalidTarget(
                f"instance {instance_id!r} has no process, but the supervisor program "
                f"{self._template!r} needs one; fill the process column or drop {{process}}"
            )
        process = check_safe_name("process name", target.process)
        name = substitute(self._template, {"{process}": process, "{id}": instance_id})
        return check_safe_name("supervisor program", name)

    async def recover(self, target: Target) -> ActionResult:
        name = self.key(target)
        with Session(self._url, self._timeout) as rpc:
            old = await rpc.info(name)
            old_facts = process_facts(old.pid) if self._url.local else None
            if old_facts is not None and old_facts["state"] == psutil.STATUS_STOPPED:
                await rpc.call("signalProcess", name, "CONT", met=(Faults.NOT_RUNNING,))
            await rpc.call("stopProcess", name, False, met=(Faults.NOT_RUNNING,))
            await self._wait_stopped(rpc, name, old.pid)
            await rpc.call("startProcess", name, True, met=(Faults.ALREADY_STARTED,))
            new = await rpc.info(name)
        _check_restarted(name, old.pid, new)
        detail = restart_evidence(old.pid, old_facts, new.pid)
        detail.update(
            program=name,
            backend="supervisor",
            old_program_state=old.state,
            old_started=old.start if old.pid is not None else None,
            new_started=new.start,
        )
        return ActionResult(detail=detail, generation=Generation(new.pid, new.start))

    async def generation(self, name: str) -> Generation | None:
        """The pid and start time of RUNNING program `name` (a `key()` result); None when
        it is not running. Raises a RecoveryError when supervisord cannot be asked within
        `min(timeout, 5 s)`, does not know the program, or the name is not safe."""
        program = check_safe_name("supervisor program", name)
        with Session(self._url, min(self._timeout, _LOCATE_TIMEOUT)) as rpc:
            info = await rpc.info(program)
        if info.state != "RUNNING" or info.pid is None:
            return None
        return Generation(info.pid, info.start)

    async def locate(self, name: str) -> int | None:
        """The pid of RUNNING program `name` (a `key()` result); None when it is not
        running, unknown, unreachable or not a safe name."""
        try:
            generation = await self.generation(name)
        except RecoveryError:
            return None
        return generation.pid if generation is not None else None

    async def _wait_stopped(self, rpc: Session, name: str, pid: int | None) -> None:
        """Poll until the program is down; SIGKILL it after `stop_wait` or when frozen."""
        loop = asyncio.get_running_loop()
        kill_at = loop.time() + self._stop_wait
        killed = False
        while (await rpc.info(name)).state not in _STOPPED_STATES:
            now = loop.time()
            if not killed and (now >= kill_at or self._frozen(pid)):
                await rpc.call("signalProcess", name, "KILL", met=(Faults.NOT_RUNNING,))
                killed, kill_at = True, now
            elif killed and now >= kill_at + _KILL_GRACE:
                raise TransientRecoveryError(
                    f"supervisor program {name!r} did not stop within {_KILL_GRACE:g}s of "
                    "SIGKILL; check the process (uninterruptible I/O?) and supervisord's log"
                )
            await asyncio.sleep(_POLL)

    def _frozen(self, pid: int | None) -> bool:
        """True when the old process is (still) SIGSTOPped, as far as we can see it."""
        facts = process_facts(pid) if self._url.local else None
        return facts is not None and facts["state"] == psutil.STATUS_STOPPED


def _check_restarted(name: str, old_pid: int | None, new: ProcessInfo) -> None:
    if new.state != "RUNNING" or new.pid is None:
        raise TransientRecoveryError(
            f"supervisor program {name!r} is {new.state} after start, not RUNNING; "
            "see the program's log"
        )
    if new.pid == old_pid:
        raise TransientRecoveryError(
            f"supervisor program {name!r} kept pid {old_pid} after a restart; "
            "check supervisord's log"
        )
