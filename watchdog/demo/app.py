"""Simulated application for ``make demo`` and the end-to-end tests (stdlib only).

It owns the ``instances`` table, beats for its healthy instances, injects a scenario's faults
and offers two remedies: ``POST /api/instances/{id}/restart`` and the ``force_reconnect``
column. The third, a process restart, is a new start of this program: it cures every freeze
and hang, while the ledger ``DB.faults.json`` makes each fault fire once per demo, not once per
process (delete the database and the ledger to start a new demo). SIGTERM/SIGINT: exit 0.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import os
import re
import signal
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, cast
from urllib.parse import unquote

__all__ = ["ScenarioError", "Simulator", "Spec", "default_scenario", "load_scenario", "main"]

_STARTED = time.monotonic()
_LOG_LOCK = threading.RLock()
_NOW = "strftime('%Y-%m-%d %H:%M:%f','now')"
SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
  id                 TEXT PRIMARY KEY,
  enabled            BOOLEAN   NOT NULL DEFAULT TRUE,
  connection_status  TEXT      NOT NULL,
  status_changed_at  TIMESTAMP NOT NULL,
  last_heartbeat_at  TIMESTAMP,
  force_reconnect    BOOLEAN   NOT NULL DEFAULT FALSE,
  process            TEXT
)"""
FAULTS = ("none", "freeze", "connecting", "banned")
CURES = ("api_restart", "db_flag", "process_restart")
_KEYS = frozenset({"id", "enabled", "fault", "at", "cured_by"})
# Simulated state of an instance -> connection_status it shows (a frozen one still claims to be
# connected: only its stale heartbeat gives it away).
_STATUS = dict(healthy="CONNECTED", frozen="CONNECTED", connecting="CONNECTING", banned="BANNED")
_FAULT_STATE = {"freeze": "frozen", "connecting": "connecting", "banned": "banned"}
_RESTART_PATH = re.compile(r"/api/instances/([^/?#]+)/restart")


def log(message: str) -> None:
    """Print one event line on stdout, stamped with seconds since the process started."""
    with _LOG_LOCK:
        print(f"[demo-app +{time.monotonic() - _STARTED:7.2f}s] {message}", flush=True)


class ScenarioError(ValueError):
    """The scenario file is not a valid list of instances."""


@dataclass(frozen=True)
class Spec:
    """One scenario instance: its fault, when it fires (seconds after start) and its remedy."""

    id: str
    enabled: bool = True
    fault: str = "none"
    at: float = 0.0
    cured_by: str = "process_restart"


def default_scenario() -> list[Spec]:
    """The built-in demo: seven healthy instances and one of each kind of trouble."""
    return [
        Spec("wa-01"),
        Spec("wa-02"),
        Spec("wa-03", fault="freeze", at=3.0, cured_by="api_restart"),
        Spec("wa-04", fault="freeze", at=3.0, cured_by="db_flag"),
        Spec("wa-05", fault="connecting", at=3.0, cured_by="process_restart"),
        Spec("wa-06", enabled=False, fault="freeze", at=0.0),
        Spec("wa-07", fault="banned", at=0.0),
        # Enough healthy instances that three failures are not a fleet-wide failure
        # (which would engage the watchdog's mass-failure brake).
        *(Spec(f"wa-{n:02d}") for n in range(8, 13)),
    ]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ScenarioError(message)


def _spec(raw: object, where: str) -> Spec:
    _require(isinstance(raw, dict), f"{where}: expected an object")
    item = cast(dict[str, Any], raw)
    _require(not set(item) - _KEYS, f"{where}: unknown keys {sorted(set(item) - _KEYS)}")
    iid, at = item.get("id"), item.get("at", 0)
    _require(isinstance(iid, str) and iid != "", f"{where}: 'id' must be a non-empty string")
    enabled, fault = item.get("enabled", True), item.get("fault", "none")
    _require(isinstance(enabled, bool), f"{where}: 'enabled' must be a boolean")
    _require(fault in FAULTS, f"{where}: 'fault' must be one of {', '.join(FAULTS)}")
    number = isinstance(at, int | float) and not isinstance(at, bool)
    _require(number and at >= 0, f"{where}: 'at' must be a number of seconds >= 0")
    cured_by = item.get("cured_by", "process_restart")
    _require(cured_by in CURES, f"{where}: 'cured_by' must be one of {', '.join(CURES)}")
    return Spec(str(iid), bool(enabled), str(fault), float(at), str(cured_by))


def load_scenario(path: Path) -> list[Spec]:
    """Read and validate a scenario: a JSON list of instance objects with unique ids."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"{path}: {exc}") from exc
    _require(isinstance(raw, list), f"{path}: expected a JSON list of instances")
    specs = [_spec(item, f"{path}[{n}]") for n, item in enumerate(raw)]
    ids = [spec.id for spec in specs]
    _require(len(ids) == len(set(ids)), f"{path}: duplicate instance ids")
    return specs


class Simulator:
    """The application's instances: their simulated state, the table and the fault ledger."""

    def __init__(self, db: Path, specs: list[Spec], started: float) -> None:
        self.specs = {spec.id: spec for spec in specs}
        self.started = started
        self.ledger = Path(f"{db}.faults.json")
        self.fired = self._load_ledger()
        # A new process cures freezes and hangs; a ban outlives any restart.
        self.state = {
            s.id: "banned" if self.fired.get(s.id) == s.fault == "banned" else "healthy"
            for s in specs
        }
        self._lock = threading.Lock()
        # Writes open "BEGIN IMMEDIATE" so the busy timeout covers the whole transaction; each
        # "with self._db" block commits (or rolls back) one transaction.
        self._db = sqlite3.connect(
            db, timeout=5.0, isolation_level="IMMEDIATE", check_same_thread=False
        )

    def _load_ledger(self) -> dict[str, str]:
        try:
            fired = json.loads(self.ledger.read_text(encoding="utf-8"))["fired"]
            return {str(k): str(v) for k, v in dict(fired).items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if not isinstance(exc, FileNotFoundError):
                log(f"ignoring unreadable fault ledger {self.ledger}: {exc!r}")
            return {}

    def _save_ledger(self) -> None:
        tmp = self.ledger.with_name(f"{self.ledger.name}.tmp")
        tmp.write_text(json.dumps({"fired": self.fired}, indent=2, sort_keys=True), "utf-8")
        os.replace(tmp, self.ledger)

    def start(self) -> None:
        """Prepare the database and upsert every instance of the scenario."""
        self._db.execute("PRAGMA busy_timeout = 5000")
        self._db.execute("PRAGMA journal_mode = WAL").close()
        self._db.execute(SCHEMA)
        with self._lock, self._db:
            self._fire_due()
            rows = [(s.id, s.enabled, _STATUS[self.state[s.id]]) for s in self.specs.values()]
            self._db.executemany(
                "INSERT INTO instances (id, enabled, connection_status, status_changed_at,"
                f" last_heartbeat_at, force_reconnect) VALUES (?, ?, ?, {_NOW}, NULL, 0)"
                " ON CONFLICT(id) DO UPDATE SET enabled = excluded.enabled, force_reconnect = 0,"
                " connection_status = excluded.connection_status,"
                " status_changed_at = excluded.status_changed_at",
                rows,
            )
            self._save_ledger()
        log(f"upserted {len(self.specs)} instances: {self.state}")

    def _fire_due(self) -> list[Spec]:
        """Inject the faults whose time has come and that never fired in this demo."""
        elapsed = time.monotonic() - self.started
        due = [
            s
            for s in self.specs.values()
            if s.fault != "none" and self.fired.get(s.id) != s.fault and elapsed >= s.at
        ]
        for spec in due:
            self.state[spec.id] = _FAULT_STATE[spec.fault]
            self.fired[spec.id] = spec.fault
            cure = "never cured" if spec.fault == "banned" else f"cured by {spec.cured_by}"
            log(f"{spec.id}: fault {spec.fault} injected ({cure})")
        return due

    def tick(self) -> None:
        """One heartbeat round in one transaction: faults, force_reconnect flags, heartbeats."""
        with self._lock:
            with self._db:
                due = self._fire_due()
                for spec in due:
                    if spec.fault != "freeze":
                        self._set_status(spec.id)
                self._poll_flags()
                beating = [
                    (s.id,)
                    for s in self.specs.values()
                    if s.enabled and self.state[s.id] in ("healthy", "connecting")
                ]
                self._db.executemany(
                    f"UPDATE instances SET last_heartbeat_at = {_NOW} WHERE id = ?", beating
                )
            if due:
                self._save_ledger()

    def _set_status(self, iid: str) -> None:
        self._db.execute(
            f"UPDATE instances SET connection_status = ?, status_changed_at = {_NOW} WHERE id = ?",
            (_STATUS[self.state[iid]], iid),
        )

    def _poll_flags(self) -> None:
        flagged = [
            row[0] for row in self._db.execute("SELECT id FROM instances WHERE force_reconnect")
        ]
        for iid in flagged:
            if iid in self.specs:
                self._db.execute("UPDATE instances SET force_reconnect = 0 WHERE id = ?", (iid,))
                self._remedy(iid, "db_flag")

    def _remedy(self, iid: str, via: str) -> None:
        spec, state = self.specs[iid], self.state[iid]
        if state not in ("frozen", "connecting"):
            outcome = f"accepted, nothing to cure (state {state})"
        elif spec.cured_by != via:
            outcome = f"accepted but still {state} (cured only by {spec.cured_by})"
        else:
            self.state[iid] = "healthy"
            self._set_status(iid)
            outcome = "cured"
        log(f"{iid}: {via} -> {outcome}")

    def api_restart(self, iid: str) -> bool:
        """Handle the REST restart of one instance; False when the id is unknown."""
        if iid not in self.specs:
            return False
        with self._lock, self._db:
            self._remedy(iid, "api_restart")
        return True

    def beat_forever(self, stop: threading.Event, period: float) -> None:
        """Tick every ``period`` seconds until ``stop`` is set; a failed tick is logged."""
        while True:
            try:
                self.tick()
            except sqlite3.Error as exc:
                log(f"heartbeat tick failed: {exc}")
            if stop.wait(period):
                return

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()


class _Server(ThreadingHTTPServer):
    """Serves the application's REST API; request threads are joined on close."""

    daemon_threads = False
    # Listen backlog (the default 5 drops the SYNs of a burst of concurrent restart calls,
    # which then wait out a 1 s retransmit); a class attribute: the constructor listens.
    request_queue_size = 64

    def __init__(self, port: int, sim: Simulator, token: str | None) -> None:
        self.sim, self.token = sim, token
        super().__init__(("127.0.0.1", port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server_version = "demo-app/1"

    def _reply(self, code: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self, token: str | None) -> bool:
        given = self.headers.get("Authorization", "").encode()
        return token is None or hmac.compare_digest(given, f"Bearer {token}".encode())

    def do_GET(self) -> None:
        healthz = self.path == "/healthz"
        self._reply(200 if healthz else 404, {"ok": True} if healthz else {"error": "not found"})

    def do_POST(self) -> None:
        length = self.headers.get("Content-Length", "0")
        self.rfile.read(min(int(length), 65536) if length.isdigit() else 0)
        server = cast(_Server, self.server)
        match = _RESTART_PATH.fullmatch(self.path)
        if match is None:
            self._reply(404, {"error": "not found"})
        elif not self._authorized(server.token):
            self._reply(401, {"error": "unauthorized"})
        elif not server.sim.api_restart(unquote(match[1])):
            self._reply(404, {"error": "unknown instance"})
        else:
            self._reply(200, {"ok": True})

    def log_message(self, format: str, *args: Any) -> None:
        log(f"http {self.address_string()} {format % args}")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m watchdog.demo.app", description=__doc__)
    parser.add_argument("--db", required=True, type=Path, help="SQLite database file")
    parser.add_argument("--port", required=True, type=int, help="HTTP port on 127.0.0.1 (0: any)")
    parser.add_argument("--token", help="Bearer token the REST API requires (default: none)")
    parser.add_argument("--scenario", type=Path, help="scenario JSON (default: built-in demo)")
    parser.add_argument("--beat", type=float, default=0.5, help="heartbeat period, seconds")
    parser.add_argument("--pidfile", type=Path, help="write the PID here while running")
    args = parser.parse_args(argv)
    if not (args.beat > 0 and 0 <= args.port <= 65535):
        parser.error("--beat must be positive and --port within 0..65535")
    return args


def _pidfile(path: Path | None, write: bool) -> None:
    """Write the pidfile, or remove it if it still names this process."""
    if path is None:
        return
    pid = str(os.getpid())
    if write:
        path.with_name(f"{path.name}.tmp").write_text(f"{pid}\n", encoding="utf-8")
        os.replace(path.with_name(f"{path.name}.tmp"), path)
        return
    with contextlib.suppress(OSError):
        if path.read_text(encoding="utf-8").strip() == pid:
            path.unlink()


def _serve(args: argparse.Namespace, sim: Simulator, stop: threading.Event) -> None:
    server = _Server(args.port, sim, args.token)
    threads = [
        threading.Thread(target=sim.beat_forever, args=(stop, args.beat), name="heartbeat"),
        threading.Thread(target=server.serve_forever, args=(0.1,), name="http"),
    ]
    for thread in threads:
        thread.start()
    try:
        _pidfile(args.pidfile, write=True)
        log(f"listening on http://127.0.0.1:{server.server_address[1]} (pid {os.getpid()})")
        while not stop.wait(0.2):
            pass
        log("signalled, stopping")
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        for thread in threads:
            thread.join()
        _pidfile(args.pidfile, write=False)


def main(argv: list[str] | None = None) -> int:
    """Run the simulated application until SIGTERM or SIGINT; return the exit status."""
    args = _parse_args(argv)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        specs = load_scenario(args.scenario) if args.scenario else default_scenario()
        sim = Simulator(args.db, specs, started=_STARTED)
        try:
            sim.start()
            _serve(args, sim, stop)
        finally:
            sim.close()
    except (ScenarioError, OSError, sqlite3.Error) as exc:
        print(f"demo-app: {exc}", file=sys.stderr, flush=True)
        return 2 if isinstance(exc, ScenarioError) else 1
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
