"""A real supervisord for the demo: it hosts the simulated application, and the watchdog
restarts it over XML-RPC exactly as it would in production.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from supervisor.xmlrpc import SupervisorTransport

from watchdog.core.errors import WatchdogError

PROGRAM = "demo-app"


class DemoSupervisor:
    def __init__(self, workdir: Path, app_argv: Sequence[str], log: IO[str]) -> None:
        # AF_UNIX paths are limited to 108 bytes: keep the socket in a short /tmp path.
        self.rundir = Path(tempfile.mkdtemp(prefix="wd-demo-", dir="/tmp"))
        self.socket = self.rundir / "supervisor.sock"
        self.url = f"unix://{self.socket}"
        self.config = workdir / "supervisord.conf"
        self._log = log
        self._proc: subprocess.Popen[bytes] | None = None
        command = " ".join(shlex.quote(part) for part in app_argv)
        self.config.write_text(f"""[unix_http_server]
file = {self.socket}
chmod = 0700

[supervisord]
logfile = {workdir / "supervisord.log"}
pidfile = {self.rundir / "supervisord.pid"}
childlogdir = {workdir}
nodaemon = true
{"user = root" if _is_root() else ""}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl = {self.url}

[program:{PROGRAM}]
command = {command}
autostart = true
autorestart = true
startsecs = 1
stopwaitsecs = 5
stdout_logfile = {workdir / "app.log"}
redirect_stderr = true
""")

    def start(self, timeout: float = 20.0) -> None:
        argv = [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(self.config)]
        self._proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise WatchdogError(f"supervisord exited at start; see {self.config.parent}")
            if self.program_state() == "RUNNING":
                return
            time.sleep(0.2)
        raise WatchdogError(f"supervisord did not start {PROGRAM} within {timeout:g}s")

    def call(self, method: str, *args: Any) -> Any:
        transport = SupervisorTransport(None, None, self.url)
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        try:
            return getattr(proxy.supervisor, method)(*args)
        finally:
            transport.close()

    def program_state(self) -> str | None:
        try:
            return str(self.call("getProcessInfo", PROGRAM)["statename"])
        except (OSError, xmlrpc.client.Error):
            return None

    def pid(self) -> int | None:
        try:
            return int(self.call("getProcessInfo", PROGRAM)["pid"]) or None
        except (OSError, xmlrpc.client.Error):
            return None

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)  # supervisord stops its programs first
            try:
                self._proc.wait(20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        shutil.rmtree(self.rundir, ignore_errors=True)


def _is_root() -> bool:
    import os

    return os.geteuid() == 0
