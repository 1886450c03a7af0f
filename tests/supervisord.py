"""A real, throwaway supervisord for the tests.

    with supervisord({"app": sleeper()}, http_auth=("user", "secret")) as sv:
        sv.url         # unix:///tmp/wd-sv-.../s.sock
        sv.http_url    # http://user:secret@127.0.0.1:PORT (with http_auth)
        sv.pid("app")  # the program's pid, straight from supervisord

supervisord runs in the foreground (`-n`) from the interpreter running the tests, with a
generated configuration in a short directory under /tmp (a unix socket path must stay
under 108 bytes). `start()` returns once supervisord answers getState with RUNNING and every
autostart program is RUNNING; `stop()` kills the programs, shuts supervisord down and waits,
so nothing is left behind. Both can be called again (to test a supervisord that is down).
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import psutil
import pytest

try:
    from supervisor.xmlrpc import SupervisorTransport
except ImportError:  # Supervisord() fails with INSTALL_HINT
    SupervisorTransport = xmlrpc.client.Transport

INSTALL_HINT = "supervisor is not installed: pip install supervisor (or `make install`)"
_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0
_RPC_TIMEOUT = 10.0
_RPC_FACTORY = "supervisor.rpcinterface:make_main_rpcinterface"
_RPC_FACTORY = "supervisor.rpcinterface:make_main_rpcinterface"


@dataclass(frozen=True)
class Program:
    """One `[program:x]` section. `extra` adds or overrides raw options."""

    command: str | Sequence[str]
    stopwaitsecs: int = 10
    startsecs: int = 0
    autostart: bool = True
    extra: Mapping[str, str] = field(default_factory=dict)

    def section(self, name: str, rundir: Path) -> str:
        command = self.command if isinstance(self.command, str) else shlex.join(self.command)
        options = {
            "command": command.replace("%", "%%"),  # supervisord expands %(name)s
            "autostart": str(self.autostart).lower(),
            "autorestart": "false",
            "startsecs": str(self.startsecs),
            "stopwaitsecs": str(self.stopwaitsecs),
            "stdout_logfile": str(rundir / f"{name}.log"),
            "redirect_stderr": "true",
            **self.extra,
        }
        return _section(f"program:{name}", options)


def python(code: str, **options: Any) -> Program:
    """A program running `code` in this interpreter."""
    return Program([sys.executable, "-c", code], **options)


def sleeper(**options: Any) -> Program:
    """A program that sleeps for an hour: a stand-in for a long-lived application."""
    return python("import time; time.sleep(3600)", **options)


class Supervisord:
    """A supervisord process with a generated configuration; see the module docstring."""

    def __init__(
        self,
        programs: Mapping[str, str | Sequence[str] | Program],
        *,
        groups: Mapping[str, Sequence[str]] | None = None,
        http_auth: tuple[str, str] | None = None,
    ) -> None:
        if importlib.util.find_spec("supervisor") is None:
            pytest.fail(INSTALL_HINT, pytrace=False)
        self.programs = {
            name: p if isinstance(p, Program) else Program(p) for name, p in programs.items()
        }
        self.groups = dict(groups or {})
        self.rundir = Path(tempfile.mkdtemp(prefix="wd-sv-", dir="/tmp"))
        self.socket = self.rundir / "s.sock"
        self.url = f"unix://{self.socket}"
        self.http_auth = http_auth
        self.port = _free_port() if http_auth else None
        self.config = self.rundir / "supervisord.conf"
        self.config.write_text(self._config())
        self._proc: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    @property
    def http_url(self) -> str:
        """The inet server's URL, credentials included (percent-encoded)."""
        if self.http_auth is None:
            raise AssertionError("this supervisord was started without http_auth")
        user, password = (quote(part, safe="") for part in self.http_auth)
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Supervisord:
        """Start supervisord and wait until it and its autostart programs are RUNNING."""
        if self.running:
            return self
        self.socket.unlink(missing_ok=True)
        self._output = (self.rundir / "supervisord.out").open("ab")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill the programs, shut supervisord down and wait for it; idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            children = _descendants(proc.pid)
            _kill(children)  # a SIGSTOPped or stubborn program would stall a graceful stop
            with contextlib.suppress(OSError, xmlrpc.client.Error, http.client.HTTPException):
                self.call("shutdown")
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            _kill(children)  # anything that survived supervisord
        if self._output is not None:
            self._output.close()
            self._output = None

    def close(self) -> None:
        """Stop, then remove the run directory."""
        self.stop()
        shutil.rmtree(self.rundir, ignore_errors=True)

    def __enter__(self) -> Supervisord:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ XML-RPC

    def call(self, method: str, *args: Any) -> Any:
        """`supervisor.<method>(*args)` over the unix socket, on a connection of its own."""
        transport = _TimedTransport(self.url)
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        try:
            return getattr(proxy.supervisor, method)(*args)
        finally:
            transport.close()

    def info(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = self.call("getProcessInfo", name)
        return info

    def pid(self, name: str) -> int:
        """The pid of a RUNNING program; fails otherwise."""
        info = self.info(name)
        if info["statename"] != "RUNNING" or not info["pid"]:
            raise AssertionError(f"program {name} is {info['statename']}, not RUNNING")
        return int(info["pid"])

    def log(self) -> str:
        """supervisord's own log and console output, for failure messages."""
        parts = [self.rundir / "supervisord.log", self.rundir / "supervisord.out"]
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in parts if p.exists())

    # ------------------------------------------------------------------ internals

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._ready():
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise AssertionError(
                    f"supervisord exited with {self._proc.returncode}:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"supervisord not RUNNING after {_START_TIMEOUT}s")
            time.sleep(0.05)

    def _ready(self) -> bool:
        try:
            if self.call("getState")["statename"] != "RUNNING":
                return False
            states = {p["name"]: p["statename"] for p in self.call("getAllProcessInfo")}
        except (OSError, xmlrpc.client.Error, http.client.HTTPException):
            return False
        autostart = [name for name, p in self.programs.items() if p.autostart]
        return all(states.get(name) == "RUNNING" for name in autostart)

    def _config(self) -> str:
        daemon = {
            "logfile": str(self.rundir / "supervisord.log"),
            "pidfile": str(self.rundir / "supervisord.pid"),
            "childlogdir": str(self.rundir),
            "nodaemon": "true",
        }
        if os.geteuid() == 0:
            daemon["user"] = "root"  # says "yes, as root" and silences the warning
        sections = [
            _section("unix_http_server", {"file": str(self.socket), "chmod": "0700"}),
            _section("supervisord", daemon),
            _section("rpcinterface:supervisor", {"supervisor.rpcinterface_factory": _RPC_FACTORY}),
            _section("supervisorctl", {"serverurl": self.url}),
        ]
        if self.http_auth:
            user, password = self.http_auth
            inet = {"port": f"127.0.0.1:{self.port}", "username": user, "password": password}
            sections.append(_section("inet_http_server", inet))
        sections += [p.section(name, self.rundir) for name, p in self.programs.items()]
        sections += [
            _section(f"group:{name}", {"programs": ",".join(members)})
            for name, members in self.groups.items()
        ]
        return "\n".join(sections)


@contextlib.contextmanager
def supervisord(
    programs: Mapping[str, str | Sequence[str] | Program],
    *,
    groups: Mapping[str, Sequence[str]] | None = None,
    http_auth: tuple[str, str] | None = None,
) -> Iterator[Supervisord]:
    """A running supervisord with these programs (name → command or Program); see above."""
    with Supervisord(programs, groups=groups, http_auth=http_auth) as sv:
        yield sv


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=_RPC_TIMEOUT)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _TimedTransport(SupervisorTransport):  # type: ignore[misc]
    """supervisor's transport with a socket timeout, so a hung supervisord fails a test
    instead of hanging it."""

    def __init__(self, url: str) -> None:
        super().__init__(None, None, url)
        self._get_connection = lambda: _UnixConnection(url[len("unix://") :])


def _section(name: str, options: Mapping[str, str]) -> str:
    lines = [f"[{name}]", *(f"{key}={value}" for key, value in options.items())]
    return "\n".join(lines) + "\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _kill(procs: list[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()  # psutil checks the pid still names the same process
    psutil.wait_procs(procs, timeout=_STOP_TIMEOUT)
