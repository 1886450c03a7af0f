"""`watchdogctl demo`: the whole ladder, live, on SQLite, with nothing but Python.

Starts a real supervisord hosting the simulated application, starts the watchdog daemon
with compressed timings (its process rung restarts the application through supervisord's
XML-RPC), prints the status table as it changes, and ends with the audit trail.
Everything lives in one working directory.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from watchdog import render, views
from watchdog.config import Settings, load_settings
from watchdog.core.errors import WatchdogError
from watchdog.core.model import AuditAction, AuditRow
from watchdog.core.ports import AuditQuery
from watchdog.demo.supervisor import PROGRAM, DemoSupervisor
from watchdog.wiring import open_runtime

# wa-03 is cured by the API, wa-04 by the flag, wa-05 only by a process restart.
EXPECTED_RECOVERIES = {"wa-03", "wa-04", "wa-05"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config_text(workdir: Path, port: int, supervisor_url: str) -> str:
    return f"""# Written by `watchdogctl demo`: the production defaults, compressed ~30x.
[database]
url = "sqlite:///{workdir / "app.db"}"

[detection]
interval = 0.5
stale_after = 3.0
connecting_after = 4.0

[escalation]
settle = 1.0
jitter = 0.1
ladder = [ {{ action = "api_restart", attempts = 2 }},
           {{ action = "db_flag", attempts = 3 }},
           {{ action = "process_restart", settle = 4.0 }} ]

[api]
restart_url = "http://127.0.0.1:{port}/api/instances/{{id}}/restart"
timeout = 2.0

[process]
backend = "supervisor"
supervisor_url = "{supervisor_url}"
program = "{PROGRAM}"
timeout = 15.0
stop_wait = 3.0

[safety]
# One program hosts every demo instance, so its restart takes down healthy ones too: the
# blast-radius guard would hold it for `watchdogctl approve`. Off for the demo.
collateral_fraction = 1.0
"""


def _wait_for_table(db: Path, timeout: float) -> None:
    import sqlite3

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.exists():
            with sqlite3.connect(db, timeout=2) as conn:
                found = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type='table' AND name='instances'"
                ).fetchone()
            if found:
                return
        time.sleep(0.1)
    raise WatchdogError(f"the demo application did not create {db} within {timeout:g}s")


async def _snapshot(settings: Settings, after_id: int) -> tuple[str, list[AuditRow]]:
    async with open_runtime(settings) as rt:
        view = await views.fleet_view(rt)
        records = views.status_records(view, settings.escalation.rules())
        rows = await rt.ledger.audit(AuditQuery(limit=10_000))
    return render.status_table(records, view.census), [r for r in rows if r.id > after_id]


def _print_new(rows: list[AuditRow]) -> None:
    for row in rows:
        if row.outcome == "started":
            continue
        attempt = f" #{row.attempt}" if row.attempt else ""
        print(f"  audit: {row.instance_id} {row.action}{attempt} → {row.outcome}")


def _watch(settings: Settings, seconds: float, started: float) -> set[str]:
    """Print the status table every two seconds until the scenario is done or time is up."""
    recovered: set[str] = set()
    last_id, last_table = 0, ""
    while time.monotonic() - started < seconds and recovered < EXPECTED_RECOVERIES:
        time.sleep(2.0)
        try:
            table, rows = asyncio.run(_snapshot(settings, last_id))
        except WatchdogError as exc:
            print(f"  (status unavailable: {exc})")
            continue
        recovered |= {r.instance_id for r in rows if r.action == AuditAction.RECOVERED}
        last_id = rows[-1].id if rows else last_id
        print(f"\n── t+{time.monotonic() - started:4.0f}s " + "─" * 60)
        _print_new(rows)
        if table != last_table:
            print(table)
            last_table = table
    return recovered


def _final_report(settings: Settings, recovered: set[str], workdir: Path) -> int:
    async def trail() -> list[AuditRow]:
        async with open_runtime(settings) as rt:
            return await rt.ledger.audit(AuditQuery(limit=10_000))

    print("\n══ audit trail " + "═" * 62)
    print(render.audit_table(asyncio.run(trail())))
    missing = EXPECTED_RECOVERIES - recovered
    print(f"\nlogs and database in {workdir}/ (watchdog.log, app.log, app.db)")
    if missing:
        print(f"demo incomplete: {', '.join(sorted(missing))} did not recover in time")
        return 1
    print("demo complete: api_restart, db_flag and process_restart each brought an instance back")
    return 0


def run_demo(workdir_name: str, seconds: float) -> int:
    workdir = Path(workdir_name).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    port, token = _free_port(), secrets.token_hex(16)
    app_argv = [
        sys.executable,
        "-m",
        "watchdog.demo.app",
        "--db",
        str(workdir / "app.db"),
        "--port",
        str(port),
        "--token",
        token,
        "--beat",
        "0.5",
    ]
    _intro(port, workdir)
    with (
        (workdir / "supervisord.out").open("w") as sv_log,
        (workdir / "watchdog.log").open("w") as wlog,
    ):
        supervisor = DemoSupervisor(workdir, app_argv, sv_log)
        config = workdir / "watchdog.toml"
        config.write_text(_config_text(workdir, port, supervisor.url))
        env = {**os.environ, "WATCHDOG_API_TOKEN": token, "WATCHDOG_CONFIG": str(config)}
        settings = load_settings(config, env)
        watchdog: subprocess.Popen[bytes] | None = None
        try:
            supervisor.start()
            first_pid = supervisor.pid()
            print(f"  supervisord runs {PROGRAM} as pid {first_pid}")
            _wait_for_table(workdir / "app.db", 15)
            watchdog = subprocess.Popen(
                [sys.executable, "-m", "watchdog", "run"],
                env=env,
                stdout=wlog,
                stderr=subprocess.STDOUT,
            )
            recovered = _watch(settings, seconds, time.monotonic())
            print(f"\n{PROGRAM} pid: {first_pid} at the start, {supervisor.pid()} now")
        finally:
            if watchdog is not None:
                watchdog.send_signal(signal.SIGTERM)
                watchdog.wait(40)
            supervisor.stop()
    print(f"watchdog stopped (exit {watchdog.returncode if watchdog else '-'})")
    return _final_report(settings, recovered, workdir)


def _intro(port: int, workdir: Path) -> None:
    print(f"demo: app on 127.0.0.1:{port} under supervisord; working dir {workdir}")
    print("  wa-03 freezes (API restart cures it), wa-04 freezes (the flag cures it),")
    print("  wa-05 hangs in CONNECTING (only a process restart through supervisord cures it),")
    print("  wa-06 is disabled and wa-07 is BANNED: the watchdog must leave them alone.")
    print("  One program hosts them all, so this demo sets [safety] collateral_fraction = 1.0:")
    print("  by default a restart that would take down more healthy instances than it cures")
    print("  is held until an operator runs `watchdogctl approve ID`.")
