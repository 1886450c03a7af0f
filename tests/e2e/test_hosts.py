"""The top rung against a real supervisord hosting two programs of several instances each,
on a real PostgreSQL, with the installed `watchdogctl run`:

- one frozen instance among healthy ones: its restart is held (blast radius), shown by
  `explain` and `status`, then let through by `watchdogctl approve`, audited with who;
- that restart is audited `host_restarted` on the other open incident the program hosts;
- a second instance of the program due within the settle shares that restart: no second
  restart of the program;
- `supervisorctl restart` of the other program is audited `host_restarted`, `by: external`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.apptable import AppTable
from tests.e2e.helpers import audit, ctl, start_daemon, watchdog_env
from tests.supervisord import Program, supervisord
from tests.waiting import wait_for

TOKEN = "hosts-e2e-token"
APP = Path(__file__).with_name("heartbeat_app.py")
SETTLE = 20.0  # the process rung's settle: long enough to be within it, whatever the timing


def write_config(tmp_path: Path, db_url: str, supervisor_url: str) -> Path:
    config = tmp_path / "watchdog.toml"
    config.write_text(f"""
[database]
url = "{db_url}"

[detection]
interval = 0.2
stale_after = 2.0
grace = 0

[escalation]
backoff_factor = 1.0
jitter = 0.0
ladder = [ {{ action = "process_restart", settle = {SETTLE} }} ]

[process]
backend = "supervisor"
supervisor_url = "{supervisor_url}"
program = "{{process}}"
timeout = 20.0
stop_wait = 3.0

[safety]
brake_min_unhealthy = 100
""")
    return config


def freeze(control: Path, instance_id: str, pid: int | str) -> None:
    """Stop `instance_id`'s heartbeats in process `pid` (`*`: in every process)."""
    with control.open("a") as out:
        out.write(f"{instance_id} {pid}\n")


def rows_of(rows: list[dict[str, Any]], instance_id: str, action: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["instance"] == instance_id and r["action"] == action]


def host_pid(app: AppTable, process: str) -> int | None:
    """The PID the watchdog last saw running `process` (its hosts table)."""
    query = sa.text("SELECT pid FROM watchdog_hosts WHERE process = :p")
    with app.engine.connect() as conn:
        pid = conn.execute(query, {"p": process}).scalar_one_or_none()
    return None if pid is None else int(pid)


def test_held_approved_shared_and_external_restarts(
    tmp_path: Path, pg_url: str, watchdogctl: str
) -> None:
    app = AppTable(pg_url)
    app.create()
    setup = write_config(tmp_path, pg_url, "unix:///x")
    assert ctl(watchdogctl, setup, "db", "upgrade", token=TOKEN).returncode == 0
    libpq_url = pg_url.replace("postgresql+psycopg://", "postgresql://")
    control = tmp_path / "frozen"
    control.touch()

    def program(name: str, *ids: str) -> Program:
        command = [sys.executable, str(APP), libpq_url, name, "--frozen", str(control), *ids]
        return Program(command, stopwaitsecs=10, startsecs=1)

    a_ids = [f"a{n}" for n in range(1, 6)]
    b_ids = ["b1", "b2", "b3"]
    programs = {"app1": program("app1", *a_ids), "app2": program("app2", *b_ids)}
    with supervisord(programs) as sv:
        config = write_config(tmp_path, pg_url, sv.url)
        wait_for(lambda: app.row("b3")["last_heartbeat_at"] is not None, 15, "heartbeats")
        log_path = tmp_path / "daemon.log"
        daemon = start_daemon(watchdogctl, config, log_path, watchdog_env(TOKEN))

        def trail() -> list[dict[str, Any]]:
            return audit(watchdogctl, config, token=TOKEN)  # type: ignore[return-value]

        def explain(instance_id: str) -> dict[str, Any]:
            result = ctl(watchdogctl, config, "explain", instance_id, "--json", token=TOKEN)
            assert result.returncode == 0, result.stderr
            explained: dict[str, Any] = json.loads(result.stdout)
            return explained

        try:
            first_pid = sv.pid("app1")
            # a3 is frozen for good but paused: open, never acted on.
            pause = ("pause", "a3", "--for", "1h", "--reason", "e2e", "--actor", "bob")
            assert ctl(watchdogctl, config, *pause, token=TOKEN).returncode == 0
            freeze(control, "a3", "*")
            freeze(control, "a1", first_pid)  # a restart cures a1
            # One frozen (a1) among three healthy of five: the restart is held.
            wait_for(lambda: rows_of(trail(), "a1", "held"), 20, "a1's restart held")
            [held] = rows_of(trail(), "a1", "held")
            assert held["outcome"] == "skipped"
            assert held["detail"] == {
                "reason": "blast_radius",
                "process": "app1",
                "healthy": 3,
                "monitored": 5,
                "collateral_fraction": 0.5,
            }
            explained = explain("a1")
            assert explained["blocked_by"] == ["blast_radius"]
            assert explained["incident"]["held"]["healthy"] == 3
            status = ctl(watchdogctl, config, "status", token=TOKEN)
            assert "held: blast radius" in status.stdout, status.stdout
            assert sv.pid("app1") == first_pid  # nothing restarted

            approved = ctl(watchdogctl, config, "approve", "a1", "--actor", "alice", token=TOKEN)
            assert approved.returncode == 0, approved.stderr
            assert "approved a1" in approved.stdout
            wait_for(lambda: rows_of(trail(), "a1", "recovered"), 30, "a1 cured by the restart")
            second_pid = sv.pid("app1")
            assert second_pid != first_pid
            rows = trail()
            restart = rows_of(rows, "a1", "process_restart")
            assert [r["outcome"] for r in restart] == ["started", "ok"]
            assert restart[0]["detail"]["approved_by"] == "alice"
            assert (restart[1]["detail"]["old_pid"], restart[1]["detail"]["new_pid"]) == (
                first_pid,
                second_pid,
            )
            [approval] = rows_of(rows, "a1", "approved")
            assert approval["actor"] == "alice"
            # a3's incident is open on the same program: it is told, by whom and why.
            [told] = rows_of(rows, "a3", "host_restarted")
            assert told["detail"]["by"] == "watchdog"
            assert told["detail"]["incident"] == restart[0]["incident"]
            assert (told["detail"]["old_pid"], told["detail"]["new_pid"]) == (
                first_pid,
                second_pid,
            )

            # a2 freezes in the new process and comes due within the settle: it shares
            # the restart instead of making a second one.
            freeze(control, "a2", second_pid)
            wait_for(
                lambda: len(rows_of(trail(), "a2", "process_restart")) == 2,
                20,
                "a2's attempt recorded",
            )
            shared = rows_of(trail(), "a2", "process_restart")
            assert shared[0]["detail"]["shared"] is True
            assert shared[1]["outcome"] == "skipped"
            assert shared[1]["detail"]["reason"] == "shared"
            assert shared[1]["detail"]["by"] == "watchdog"
            assert sv.pid("app1") == second_pid  # one restart of app1, not two

            # Someone restarts app2 by hand while b1 (frozen everywhere) has an incident.
            freeze(control, "b1", "*")
            wait_for(lambda: rows_of(trail(), "b1", "held"), 20, "b1's incident")
            old_b = sv.pid("app2")
            wait_for(lambda: host_pid(app, "app2") == old_b, 20, "app2's generation noted")
            supervisorctl = [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(sv.config)]
            restarted = subprocess.run(
                [*supervisorctl, "restart", "app2"], capture_output=True, text=True, timeout=60
            )
            assert restarted.returncode == 0, restarted.stdout + restarted.stderr
            new_b = sv.pid("app2")
            assert new_b != old_b
            wait_for(lambda: rows_of(trail(), "b1", "host_restarted"), 20, "external restart")
            [external] = rows_of(trail(), "b1", "host_restarted")
            assert external["detail"] == {
                "process": "app2",
                "old_pid": old_b,
                "new_pid": new_b,
                "by": "external",
            }
            assert rows_of(trail(), "b1", "process_restart") == []
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log_path.read_text()[-4000:]}") from None
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=40) == 0
    app.dispose()
