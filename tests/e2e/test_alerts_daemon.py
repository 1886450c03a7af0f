"""Alerts from the running daemon reach a real HTTP receiver, also across a restart of
the watchdog while the receiver was failing."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.apptable import AppTable
from tests.e2e.helpers import start_daemon, watchdog_env
from tests.waiting import wait_for


class Receiver:
    def __init__(self) -> None:
        self.status = 503
        self.bodies: list[dict[str, object]] = []
        self.attempts = 0
        self.seen: list[str] = []  # the event of each delivery attempt, as it arrives
        self.port = 0
        # When set, each delivery (or only those of event `hold`) is held (counted,
        # unanswered) until the gate opens.
        self.gate: threading.Event | None = None
        self.hold: str | None = None


@contextmanager
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            event = str(json.loads(body).get("event"))
            state.attempts += 1
            state.seen.append(event)
            if state.gate is not None and state.hold in (None, event):
                state.gate.wait(30)
            if state.status == 200:
                state.bodies.append(json.loads(body))
            self.send_response(state.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def alerting_config(tmp_path: Path, sqlite_url: str, sink: Receiver) -> Path:
    """One frozen instance whose process restart raises an alert to `sink`."""
    app = AppTable(sqlite_url)
    app.create()
    app.add("frozen", heartbeat_ago=600, process="p1")
    for n in range(3):
        app.add(f"ok{n}", heartbeat_ago=0)
    app.dispose()
    config = tmp_path / "watchdog.toml"
    config.write_text(f"""
[database]
url = "{sqlite_url}"
[detection]
interval = 0.3
stale_after = 60.0
grace = 0
[escalation]
ladder = [ {{ action = "process_restart", settle = 600 }} ]
[process]
backend = "command"
command = ["{sys.executable}", "-c", "pass"]
[alerts]
interval = 0.3
sinks = [ {{ name = "ops", kind = "json", url = "http://127.0.0.1:{sink.port}/hook" }} ]
""")
    return config


def start(watchdogctl: str, config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    return start_daemon(watchdogctl, config, log_path, watchdog_env("unused"))


def test_a_process_restart_alert_survives_a_watchdog_restart(
    tmp_path: Path, sqlite_url: str, watchdogctl: str
) -> None:
    with receiver() as sink:
        config = alerting_config(tmp_path, sqlite_url, sink)
        first = start(watchdogctl, config, tmp_path / "first.log")
        try:
            wait_for(lambda: sink.attempts >= 1, 30, "a first delivery attempt")
        finally:
            first.send_signal(signal.SIGTERM)
            assert first.wait(timeout=30) == 0
        assert sink.bodies == []  # the receiver failed: nothing delivered yet
        sink.status = 200
        second = start(watchdogctl, config, tmp_path / "second.log")
        try:
            wait_for(
                lambda: any(b["event"] == "process_restart" for b in sink.bodies),
                60,
                "the alert after the restart",
            )
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=30) == 0
    events = [b["event"] for b in sink.bodies]
    assert events.count("process_restart") == 1  # delivered once, not once per watchdog
    alert = next(b for b in sink.bodies if b["event"] == "process_restart")
    assert alert["instance"] == "frozen"
    assert alert["attempt"] == 1
    assert "process_restart" in str(alert["summary"])


def test_a_delivery_in_flight_at_sigterm_finishes_and_is_not_sent_again(
    tmp_path: Path, sqlite_url: str, watchdogctl: str
) -> None:
    """Shutdown lets the delivery in progress finish and mark its row; it is not cut off
    (which would leave the row claimed until its lease lapses, then send it twice)."""
    with receiver() as sink:
        # The process_restart alert is held in flight. (A lone daemon's start raises no
        # leader_changed alert: its lead moved from no other node.)
        sink.status, sink.gate, sink.hold = 200, threading.Event(), "process_restart"
        config = alerting_config(tmp_path, sqlite_url, sink)
        log = tmp_path / "first.log"
        first = start(watchdogctl, config, log)
        try:
            wait_for(lambda: "process_restart" in sink.seen, 30, "the alert to be in flight")
            first.send_signal(signal.SIGTERM)
            wait_for(lambda: '"event": "stopping"' in log.read_text(), 10, "stopping")
            assert first.poll() is None, "it exited with the delivery still in flight"
        finally:
            sink.gate.set()
        assert first.wait(timeout=30) == 0, log.read_text()[-2000:]
        assert [b["event"] for b in sink.bodies] == ["process_restart"]
    # Marked sent before the exit, so no watchdog will claim it again.
    path = sqlite_url.removeprefix("sqlite:///")
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT event, state, attempts FROM watchdog_outbox ORDER BY event"
        ).fetchall()
    assert rows == [("process_restart", "sent", 0)]
