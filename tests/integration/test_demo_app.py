"""The simulated demo application, run as a real process on a temporary SQLite database.

Every wait polls with a deadline; the app beats every 0.1 s and injects its faults at 0.5 s.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, TypeVar

import pytest

TOKEN = "demo-secret"
SCENARIO = [
    {"id": "ok-1"},
    {"id": "api-1", "fault": "freeze", "at": 0.5, "cured_by": "api_restart"},
    {"id": "flag-1", "fault": "freeze", "at": 0.5, "cured_by": "db_flag"},
    {"id": "proc-1", "fault": "freeze", "at": 0.5, "cured_by": "process_restart"},
    {"id": "hang-1", "fault": "connecting", "at": 0.5, "cured_by": "process_restart"},
    {"id": "ban-1", "fault": "banned"},
    {"id": "off-1", "enabled": False, "fault": "freeze"},
]
FAULTY = ("api-1", "flag-1", "proc-1", "hang-1")
DEADLINE = 5.0
T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = DEADLINE) -> T:
    """Poll ``probe`` until it returns something other than None or False."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def parse_ts(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f")


@dataclass
class DemoApp:
    """One run of the application (restartable) on a database kept in ``tmp``."""

    tmp: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return self.tmp / "app.db"

    @property
    def pidfile(self) -> Path:
        return self.tmp / "app.pid"

    def start(self) -> None:
        scenario = self.tmp / "scenario.json"
        scenario.write_text(json.dumps(SCENARIO), encoding="utf-8")
        log = (self.tmp / f"app-{len(self.logs)}.log").open("wb")
        self.logs.append(log)
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "watchdog.demo.app", "--db", str(self.db)),
                *("--port", str(self.port), "--token", TOKEN, "--scenario", str(scenario)),
                *("--beat", "0.1", "--pidfile", str(self.pidfile)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._ready, "app ready")

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"app exited {self.proc.returncode}: {self.output()}")
        return self.get("/healthz") == 200 and self.pidfile.exists()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for log in self.logs:
            log.close()

    def output(self) -> str:
        """What the latest run printed."""
        return (self.tmp / f"app-{len(self.logs) - 1}.log").read_text()

    def request(self, method: str, path: str, token: str | None = None) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def get(self, path: str) -> int | None:
        try:
            return self.request("GET", path)
        except OSError:
            return None

    def restart(self, iid: str, token: str | None = TOKEN) -> int:
        return self.request("POST", f"/api/instances/{iid}/restart", token)

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with contextlib.closing(sqlite3.connect(self.db, timeout=5)) as conn, conn:
            return conn.execute(sql, params).fetchall()

    def row(self, iid: str) -> tuple[str, str | None, int]:
        rows = self.query(
            "SELECT connection_status, last_heartbeat_at, force_reconnect FROM instances"
            " WHERE id = ?",
            (iid,),
        )
        status, beat, flag = rows[0]
        return str(status), None if beat is None else str(beat), int(str(flag))

    def beat(self, iid: str) -> str | None:
        return self.row(iid)[1]

    def fired(self) -> dict[str, str]:
        path = Path(f"{self.db}.faults.json")
        fired: dict[str, str] = json.loads(path.read_text())["fired"] if path.exists() else {}
        return fired

    def wait_faults(self) -> dict[str, str | None]:
        """Wait until the timed faults fired and the tick after them ran; return the beats."""
        wait_for(lambda: all(iid in self.fired() for iid in FAULTY), "faults injected")
        self.wait_beats("ok-1", 2)
        return {iid: self.beat(iid) for iid in FAULTY}

    def wait_beats(self, iid: str, count: int) -> None:
        """Wait until ``iid`` beat ``count`` more times."""
        for _ in range(count):
            self.wait_beat_after(iid, self.beat(iid))

    def wait_beat_after(self, iid: str, old: str | None) -> None:
        """Wait until ``iid`` has a heartbeat other than ``old``."""
        wait_for(lambda: self.beat(iid) != old, f"{iid} to beat after {old}")


@pytest.fixture
def app(tmp_path: Path) -> Iterator[DemoApp]:
    demo = DemoApp(tmp_path)
    demo.start()
    try:
        yield demo
    finally:
        demo.stop()


def test_heartbeats_advance_and_faults_show(app: DemoApp) -> None:
    first = wait_for(lambda: app.beat("ok-1"), "first heartbeat")
    wait_for(lambda: (app.beat("ok-1") or "") > first, "heartbeat advances")
    frozen = app.wait_faults()
    app.wait_beats("ok-1", 3)
    for iid in ("api-1", "flag-1", "proc-1"):
        assert app.row(iid) == ("CONNECTED", frozen[iid], 0), iid
    assert app.row("ban-1") == ("BANNED", None, 0)
    assert app.row("off-1") == ("CONNECTED", None, 0)
    status, beat, _ = app.row("hang-1")
    assert status == "CONNECTING"
    assert beat is not None
    assert beat > (frozen["hang-1"] or ""), "a hanging instance still beats"


def test_api_restart_cures_only_api_cured_instances(app: DemoApp) -> None:
    frozen = app.wait_faults()
    assert app.restart("api-1", token="wrong") == 401
    assert app.restart("api-1", token=None) == 401
    assert app.restart("nope") == 404
    assert app.request("POST", "/api/elsewhere", TOKEN) == 404
    assert app.restart("flag-1") == 200
    assert app.restart("api-1") == 200
    app.wait_beat_after("api-1", frozen["api-1"])
    assert app.row("api-1")[0] == "CONNECTED"
    app.wait_beats("ok-1", 2)
    assert app.beat("flag-1") == frozen["flag-1"], "an API restart must not cure flag-1"
    output = app.output()
    assert "api-1: api_restart -> cured" in output
    assert TOKEN not in output
    assert "wrong" not in output


def test_force_reconnect_cures_only_flag_cured_instances(app: DemoApp) -> None:
    frozen = app.wait_faults()
    app.query("UPDATE instances SET force_reconnect = 1 WHERE id IN ('flag-1', 'api-1')")
    app.wait_beat_after("flag-1", frozen["flag-1"])
    wait_for(lambda: app.row("api-1")[2] == 0 == app.row("flag-1")[2], "flags cleared")
    app.wait_beats("ok-1", 2)
    assert app.beat("api-1") == frozen["api-1"], "the flag must not cure api-1"
    assert "flag-1: db_flag -> cured" in app.output()


def test_restart_app_stops_and_faults_are_not_reinjected(app: DemoApp) -> None:
    frozen = app.wait_faults()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "watchdog.demo.restart_app",
            "--pidfile",
            str(app.pidfile),
            "--timeout",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert done.returncode == 0, done.stderr
    assert app.proc is not None
    assert app.proc.wait(timeout=5) == 0
    assert not app.pidfile.exists()

    app.start()
    for iid in ("proc-1", "api-1"):
        app.wait_beat_after(iid, frozen[iid])  # cured by the process restart
    assert app.row("hang-1")[0] == "CONNECTED"
    assert app.row("ban-1") == ("BANNED", None, 0), "a ban outlives a restart"
    # Let the new process run well past the fault time (0.5 s), measured on its own beats.
    start = parse_ts(wait_for(lambda: app.beat("ok-1"), "first beat after restart"))
    wait_for(lambda: parse_ts(app.beat("ok-1") or "") >= start + timedelta(seconds=0.8), "0.8s")
    app.wait_beats("api-1", 2)
    app.wait_beats("proc-1", 2)
    assert "injected" not in app.output()


def test_restart_app_without_pidfile_is_a_no_op(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "watchdog.demo.restart_app", "--pidfile", str(tmp_path / "x.pid")],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert done.returncode == 0
    assert "not running" in done.stdout
