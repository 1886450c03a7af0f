"""supervisord's XML-RPC, as the restart uses it: the server URL (unix socket or http,
credentials never shown), a fresh connection per recovery whose blocking calls run in a
worker thread with a socket timeout (shut down when the engine cancels), and faults
turned into the project's one-line errors."""

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

from supervisor.xmlrpc import Faults, SupervisorTransport

from watchdog.core.errors import (
    PermanentRecoveryError,
    RecoveryError,
    TransientRecoveryError,
    squeeze,
)
from watchdog.masking import without_userinfo

CHECK_URL = "check that supervisord runs and [process] supervisor_url"


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """What getProcessInfo says: the pid (None when not running), the state name and when
    the program last started (Unix seconds; None when never). supervisord keeps the last
    start after the program stopped, so `start` is only the running process's with a pid."""

    pid: int | None
    state: str
    start: float | None = None

    @classmethod
    def of(cls, raw: Any) -> ProcessInfo:
        values = raw if isinstance(raw, dict) else {}
        pid, state, start = values.get("pid"), values.get("statename"), values.get("start")
        return cls(
            pid if isinstance(pid, int) and pid > 0 else None,
            str(state or "UNKNOWN"),
            float(start) if isinstance(start, int | float) and start > 0 else None,
        )


@dataclass(frozen=True, slots=True)
class ServerUrl:
    """A parsed server URL. `display` never holds credentials."""

    display: str
    socket_path: str | None  # set for unix://
    host: str = ""
    port: int = 0
    username: str | None = None
    password: str | None = None
    local: bool = True  # pids it reports are pids on this host

    @classmethod
    def parse(cls, url: str) -> ServerUrl:
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
    def _parse_http(cls, url: str, display: str) -> ServerUrl:
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

    def __init__(self, url: ServerUrl, timeout: float) -> None:
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


class Session:
    """One fresh proxy for one recovery. Calls run one at a time in worker threads.

    Closing while a call is still running (the caller was cancelled) wakes that call, and
    the worker thread closes the connection when it returns.
    """

    def __init__(self, url: ServerUrl, timeout: float) -> None:
        self._url = url
        self._timeout = timeout
        self._transport = _Transport(url, timeout)
        self._proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=self._transport)
        self._lock = threading.Lock()
        self._busy = False
        self._closed = False

    def __enter__(self) -> Session:
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

    async def info(self, name: str) -> ProcessInfo:
        return ProcessInfo.of(await self.call("getProcessInfo", name))

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
                f"{_reason(exc, self._timeout)}; {CHECK_URL}"
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
    url: ServerUrl, method: str, args: tuple[Any, ...], fault: xmlrpc.client.Fault
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


def _protocol_error(url: ServerUrl, exc: xmlrpc.client.ProtocolError) -> RecoveryError:
    if exc.errcode == 401:
        return PermanentRecoveryError(
            f"supervisord at {url.display} rejected our credentials (401 Unauthorized); "
            "check the user:password in [process] supervisor_url"
        )
    return TransientRecoveryError(
        f"supervisord at {url.display} answered HTTP {exc.errcode} {exc.errmsg}; {CHECK_URL}"
    )


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return squeeze(str(exc)) if str(exc) else type(exc).__name__
