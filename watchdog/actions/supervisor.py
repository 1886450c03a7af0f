"""PROCESS_RESTART through supervisord's XML-RPC interface.

supervisord has no restart call, so a restart is: read the program's pid and state, wake it
with SIGCONT when it is SIGSTOPped (a stopped process cannot act on SIGTERM), stop it without
waiting inside supervisord, poll until it is down (sending SIGKILL ourselves after `stop_wait`
seconds, or at once when it is still stopped, so a frozen program never costs its full
`stopwaitsecs`), start it and check that a new pid is RUNNING.

The XML-RPC client is blocking, so every call runs in a worker thread with a socket timeout,
and every recovery uses a fresh proxy and connection (supervisor's transport keeps reusing a
broken connection after an error), closed afterwards. When the engine cancels a recovery the
socket is shut down, which releases the worker thread at once.

The server URL is `unix:///path/to/supervisor.sock` or `http://[user:password@]host:port`;
the credentials never appear in a message or an audit detail.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import ipaddress
import socket
import threading
import xmlrpc.client
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit
from xml.parsers.expat import ExpatError

import psutil
from supervisor.xmlrpc import Faults, SupervisorTransport

from watchdog.actions.evidence import process_facts, restart_evidence
from watchdog.actions.naming import (
    check_placeholders,
    check_safe_name,
    placeholders,
    resolve_process,
    substitute,
)
from watchdog.core.errors import (
    InvalidTarget,
    PermanentRecoveryError,
    RecoveryError,
    TransientRecoveryError,
    squeeze,
)
from watchdog.core.model import Action, ActionResult, Target
from watchdog.masking import without_userinfo

_POLL = 0.1  # seconds between getProcessInfo calls while waiting for a stop
_KILL_GRACE = 5.0  # seconds a program may take to go down after our SIGKILL
_LOCATE_TIMEOUT = 5.0  # `watchdogctl show` should not hang on a stuck supervisord
_STOPPED_STATES = frozenset({"STOPPED", "EXITED", "FATAL", "UNKNOWN"})
# Everything up to the last `@`: a password may hold `/`, `#` or `@` that were not escaped.
_CHECK_URL = "check that supervisord runs and [process] supervisor_url"


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
        self._url = _ServerUrl.parse(server_url)
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
        with _Session(self._url, self._timeout) as rpc:
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
        detail.update(program=name, backend="supervisor", old_program_state=old.state)
        return ActionResult(detail=detail)

    async def locate(self, name: str) -> int | None:
        """The pid of RUNNING program `name` (a `key()` result); None when it is not
        running, unknown, unreachable or not a safe name."""
        try:
            program = check_safe_name("supervisor program", name)
            with _Session(self._url, min(self._timeout, _LOCATE_TIMEOUT)) as rpc:
                info = await rpc.info(program)
        except RecoveryError:
            return None
        return info.pid if info.state == "RUNNING" else None

    async def _wait_stopped(self, rpc: _Session, name: str, pid: int | None) -> None:
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


def _check_restarted(name: str, old_pid: int | None, new: _Info) -> None:
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


# ---------------------------------------------------------------------------- the server


@dataclass(frozen=True, slots=True)
class _Info:
    """What getProcessInfo says: the pid (None when not running) and the state name."""

    pid: int | None
    state: str

    @classmethod
    def of(cls, raw: Any) -> _Info:
        pid = raw.get("pid") if isinstance(raw, dict) else None
        state = raw.get("statename") if isinstance(raw, dict) else None
        return cls(pid if isinstance(pid, int) and pid > 0 else None, str(state or "UNKNOWN"))


@dataclass(frozen=True, slots=True)
class _ServerUrl:
    """A parsed server URL. `display` never holds credentials."""

    display: str
    socket_path: str | None  # set for unix://
    host: str = ""
    port: int = 0
    username: str | None = None
    password: str | None = None
    local: bool = True  # pids it reports are pids on this host

    @classmethod
    def parse(cls, url: str) -> _ServerUrl:
        if url.startswith("unix://"):
            if not url[len("unix://") :]:
                raise ValueError(
                    "supervisor url 'unix://' has no socket path; use e.g. unix:///run/supervisor.sock"
                )
            return cls(display=url, socket_path=url[len("unix://") :])
        display = without_userinfo(url)
        if url.startswith("http://"):
            return cls._parse_http(url, display)
        raise ValueError(
            f"supervisor url {display!r} must start with unix:// or http:// "
            "(e.g. unix:///run/supervisor.sock or http://127.0.0.1:9001)"
        )

    @classmethod
    def _parse_http(cls, url: str, display: str) -> _ServerUrl:
        parts = urlsplit(url)
        if "@" in url and "@" not in parts.netloc:
            raise ValueError(
                f"supervisor url {display!r} is not valid; percent-encode any / ? # @ "
                "in its user and password"
            )
        try:
            port = parts.port or 80
        except ValueError:
            raise ValueError(f"supervisor url {display!r} has an invalid port") from None
        if not parts.hostname:
            raise ValueError(f"supervisor url {display!r} has no host")
        hostport = parts.netloc.rpartition("@")[2]
        username = unquote(parts.username) if parts.username is not None else None
        password = unquote(parts.password or "") if username is not None else None
        return cls(
            display=f"http://{hostport}",
            socket_path=None,
            host=parts.hostname,
            port=port,
            username=username,
            password=password,
            local=_is_loopback(parts.hostname),
        )

    @property
    def transport_url(self) -> str:
        """The URL handed to SupervisorTransport (it only looks at the scheme here)."""
        if self.socket_path is not None:
            return f"unix://{self.socket_path}"
        return self.display

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        """A new, unconnected connection whose socket will time out after `timeout`."""
        if self.socket_path is not None:
            return _UnixConnection(self.socket_path, timeout)
        return _Connection(self.host, self.port, timeout=timeout)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Connection(http.client.HTTPConnection):
    """An HTTP connection that also closes its last response when it is closed.

    SupervisorTransport closes the connection on a non-200 answer but never the response,
    whose file object keeps the socket open until the garbage collector gets to it.
    """

    _response: http.client.HTTPResponse | None = None

    def getresponse(self) -> http.client.HTTPResponse:
        self._response = super().getresponse()
        return self._response

    def close(self) -> None:
        super().close()
        response, self._response = self._response, None
        if response is not None:
            response.close()


class _UnixConnection(_Connection):
    """HTTP over a unix socket, with a timeout on connect and every read and write."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _Transport(SupervisorTransport):  # type: ignore[misc]  # supervisor has no stubs
    """supervisor's transport (keep-alive, basic auth), with our own timed connections."""

    def __init__(self, url: _ServerUrl, timeout: float) -> None:
        super().__init__(url.username, url.password, url.transport_url)
        # SupervisorTransport makes its connection lazily through this hook; its own
        # connections have no timeout, so a hung supervisord would block a thread forever.
        self._get_connection = lambda: url.connect(timeout)

    def wake(self) -> None:
        """Shut the socket down so that a call blocked on it in another thread returns."""
        sock = getattr(self.connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Session:
    """One fresh proxy for one recovery. Calls run one at a time in worker threads.

    Closing while a call is still running (the caller was cancelled) wakes that call, and
    the worker thread closes the connection when it returns.
    """

    def __init__(self, url: _ServerUrl, timeout: float) -> None:
        self._url = url
        self._timeout = timeout
        self._transport = _Transport(url, timeout)
        self._proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=self._transport)
        self._lock = threading.Lock()
        self._busy = False
        self._closed = False

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._busy:
                self._transport.wake()
                return
        self._transport.close()

    async def info(self, name: str) -> _Info:
        return _Info.of(await self.call("getProcessInfo", name))

    async def call(self, method: str, *args: Any, met: Collection[int] = ()) -> Any:
        """Call `supervisor.<method>(*args)`; a Fault whose code is in `met` means the goal
        is already met and returns None. Everything else becomes a RecoveryError."""
        try:
            return await asyncio.to_thread(self._call, method, args)
        except xmlrpc.client.Fault as exc:
            if exc.faultCode in met:
                return None
            raise _fault_error(self._url, method, args, exc) from exc
        except xmlrpc.client.ProtocolError as exc:
            raise _protocol_error(self._url, exc) from exc
        except (OSError, http.client.HTTPException, xmlrpc.client.Error, ExpatError) as exc:
            raise TransientRecoveryError(
                f"supervisord at {self._url.display} unreachable: "
                f"{_reason(exc, self._timeout)}; {_CHECK_URL}"
            ) from exc

    def _call(self, method: str, args: tuple[Any, ...]) -> Any:
        with self._lock:
            if self._closed:
                raise ConnectionAbortedError("the call was cancelled")
            self._busy = True
        try:
            return getattr(self._proxy.supervisor, method)(*args)
        finally:
            with self._lock:
                self._busy = False
                if self._closed:
                    self._transport.close()


# ---------------------------------------------------------------------------- errors


def _fault_error(
    url: _ServerUrl, method: str, args: tuple[Any, ...], fault: xmlrpc.client.Fault
) -> RecoveryError:
    name = args[0] if args else ""
    if fault.faultCode == Faults.BAD_NAME:
        return PermanentRecoveryError(
            f"supervisord has no program {name!r}; check [process] program or the process column"
        )
    if fault.faultCode == Faults.UNKNOWN_METHOD:
        return PermanentRecoveryError(
            f"supervisord at {url.display} does not offer supervisor.{method}; "
            "enable [rpcinterface:supervisor] in its configuration"
        )
    return TransientRecoveryError(
        f"supervisord {method} {name!r} failed: {squeeze(fault.faultString)}; "
        "see the program's log and supervisord's log"
    )


def _protocol_error(url: _ServerUrl, exc: xmlrpc.client.ProtocolError) -> RecoveryError:
    if exc.errcode == 401:
        return PermanentRecoveryError(
            f"supervisord at {url.display} rejected our credentials (401 Unauthorized); "
            "check the user:password in [process] supervisor_url"
        )
    return TransientRecoveryError(
        f"supervisord at {url.display} answered HTTP {exc.errcode} {exc.errmsg}; {_CHECK_URL}"
    )


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return squeeze(str(exc)) if str(exc) else type(exc).__name__
