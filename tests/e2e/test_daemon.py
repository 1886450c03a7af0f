"""The installed `watchdogctl run` as a subprocess, against a real HTTP server, a real
process-restart command and a real SQLite file, with compressed timings.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.apptable import AppTable
from tests.e2e.helpers import audit, ctl, start_daemon, watchdog_env
from tests.httpapp import RestartApi, restart_api
from tests.waiting import wait_for

TOKEN = "e2e-token-not-for-logs"


class Beater:
    """A heartbeat writer for the instances that are alive, like the application's."""

    def __init__(self, app: AppTable, alive: set[str]) -> None:
        self.app, self.alive = app, alive
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for instance_id in list(self.alive):
                self.app.beat(instance_id)

    def __enter__(self) -> Beater:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def write_config(tmp_path: Path, db_url: str, api_url: str, marker: Path) -> Path:
    restart_script = tmp_path / "restart.py"
    restart_script.write_text(
        "import sys\nwith open(sys.argv[2], 'a') as f:\n    f.write(sys.argv[1] + '\\n')\n"
    )
    config = tmp_path / "watchdog.toml"
    config.write_text(f"""
[database]
url = "{db_url}"

[detection]
interval = 0.2
stale_after = 2.0
connecting_after = 3.0

[escalation]
settle = 0.3
backoff_factor = 1.0
jitter = 0.0
max_attempts = 7
ladder = [ {{ action = "api_restart", attempts = 2 }},
           {{ action = "db_flag", attempts = 3 }},
           {{ action = "process_restart", settle = 0.5 }} ]

[api]
restart_url = "{api_url}"
timeout = 2.0

[process]
backend = "command"
program = "app-main"
command = ["{sys.executable}", "{restart_script}", "{{process}}", "{marker}"]
timeout = 5.0

[safety]
# app-main hosts every instance here: the whole ladder, not the blast radius, is the point
# (tests/e2e/test_hosts.py holds and approves).
collateral_fraction = 1.0
""")
    return config


@pytest.fixture
def daemon_log(tmp_path: Path) -> Path:
    return tmp_path / "daemon.log"


def test_a_frozen_instance_climbs_the_whole_ladder(
    tmp_path: Path, sqlite_url: str, watchdogctl: str, daemon_log: Path
) -> None:
    app = AppTable(sqlite_url)
    app.create()
    app.add("frozen", heartbeat_ago=60)
    app.add("cured-by-api", heartbeat_ago=60)
    app.add("healthy", heartbeat_ago=0)
    app.add("disabled", enabled=False, heartbeat_ago=600)
    app.add("banned", status="BANNED", heartbeat_ago=None, status_ago=600)
    alive = {"healthy"}
    marker = tmp_path / "restarts.txt"

    def cure(instance_id: str) -> None:
        if instance_id == "cured-by-api":
            alive.add(instance_id)
            app.beat(instance_id)

    with restart_api(RestartApi(on_restart=cure)) as api, Beater(app, alive):
        config = write_config(tmp_path, sqlite_url, api.url(), marker)
        env = watchdog_env(TOKEN)
        proc = start_daemon(watchdogctl, config, daemon_log, env)
        try:
            wait_for(lambda: marker.exists(), 30, "the process restart command")
            alive.add("frozen")  # the restarted process brings the instance back
            wait_for(
                lambda: any(
                    r["action"] == "recovered"
                    for r in audit(watchdogctl, config, token=TOKEN, instance_id="frozen")
                ),
                15,
                "the frozen instance to recover",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; daemon log:\n{daemon_log.read_text()[-3000:]}") from None
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=15)
        assert code == 0, daemon_log.read_text()[-2000:]

    frozen = audit(watchdogctl, config, token=TOKEN, instance_id="frozen")
    acts = [
        (r["action"], r["attempt"], r["outcome"])
        for r in frozen
        if r["action"] not in ("detected", "recovered")
    ]
    ladder = ["api_restart"] * 2 + ["db_flag"] * 3 + ["process_restart"]
    expected = []
    for attempt, action in enumerate(ladder, start=1):
        expected += [(action, attempt, "started"), (action, attempt, "ok")]
    assert acts[: len(expected)] == expected
    assert frozen[0]["action"] == "detected"
    assert frozen[-1]["action"] == "recovered"
    assert frozen[-1]["detail"]["time_to_recover"] > 0  # type: ignore[index]

    assert marker.read_text().split() == ["app-main"]  # one restart, of the default program
    assert app.row("frozen")["force_reconnect"] in (True, 1)
    frozen_calls = api.calls_for("frozen")
    assert len(frozen_calls) == 2
    assert all(c.authorization == f"Bearer {TOKEN}" for c in frozen_calls)

    cured = audit(watchdogctl, config, token=TOKEN, instance_id="cured-by-api")
    assert [r["action"] for r in cured] == ["detected", "api_restart", "api_restart", "recovered"]
    for untouched in ("healthy", "disabled", "banned"):
        assert audit(watchdogctl, config, token=TOKEN, instance_id=untouched) == []
        assert api.calls_for(untouched) == []
        assert app.row(untouched)["force_reconnect"] in (False, 0)

    log_text = daemon_log.read_text()
    assert TOKEN not in log_text
    events = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    assert sum(e.get("event") == "audit" for e in events) >= len(frozen) + len(cured)
    app.dispose()


def test_dry_run_touches_nothing(tmp_path: Path, sqlite_url: str, watchdogctl: str) -> None:
    app = AppTable(sqlite_url)
    app.create()
    app.add("frozen", heartbeat_ago=60)
    with restart_api(RestartApi()) as api:
        config = write_config(tmp_path, sqlite_url, api.url(), tmp_path / "marker")
        result = ctl(watchdogctl, config, "run", "--once", "--dry-run", token=TOKEN)
        assert result.returncode == 0, result.stderr
        assert api.requests == []
    rows = audit(watchdogctl, config, token=TOKEN, instance_id="frozen")
    assert [(r["action"], r["outcome"]) for r in rows] == [
        ("detected", "skipped"),
        ("api_restart", "skipped"),
    ]
    # A dry run opens no incident, and status still says the instance is unhealthy.
    status = json.loads(ctl(watchdogctl, config, "status", "--json", token=TOKEN).stdout)
    assert [(s["id"], s["state"], s["incident"]) for s in status] == [("frozen", "unhealthy", None)]
    assert app.row("frozen")["force_reconnect"] in (False, 0)
    app.dispose()


def test_python_dash_m_is_the_same_cli(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "watchdog", "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    assert "WATCHDOG_<SECTION>__<KEY>" in result.stdout


def test_systemd_notifications_follow_the_cycles(
    tmp_path: Path, sqlite_url: str, watchdogctl: str
) -> None:
    """A real unix datagram socket as NOTIFY_SOCKET, as systemd would hand it over."""
    import socket
    import tempfile

    app = AppTable(sqlite_url)
    app.create()
    app.add("healthy", heartbeat_ago=0)
    sock_dir = Path(tempfile.mkdtemp(prefix="wd-notify-", dir="/tmp"))
    address = str(sock_dir / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        server.settimeout(15)
        config = write_config(tmp_path, sqlite_url, "http://127.0.0.1:9/{id}", tmp_path / "m")
        env = {
            **os.environ,
            "WATCHDOG_API_TOKEN": TOKEN,
            "NOTIFY_SOCKET": address,
            "WATCHDOG_USEC": "400000",
        }
        proc = start_daemon(watchdogctl, config, tmp_path / "err", env)
        try:
            try:
                received = [server.recv(4096).decode() for _ in range(3)]
            except TimeoutError:
                raise AssertionError((tmp_path / "err").read_text()[-2000:]) from None
            proc.send_signal(signal.SIGTERM)
            while "STOPPING=1" not in received:
                received.append(server.recv(4096).decode())
        finally:
            if proc.poll() is None and "STOPPING=1" not in received:
                proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=15)
    shutil.rmtree(sock_dir, ignore_errors=True)
    app.dispose()
    assert code == 0
    assert received[0] == "READY=1"
    assert received.count("WATCHDOG=1") >= 2
    assert received[-1] == "STOPPING=1"


def test_health_endpoint_and_metrics_of_a_running_daemon(
    tmp_path: Path, sqlite_url: str, watchdogctl: str
) -> None:
    import socket

    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    app = AppTable(sqlite_url)
    app.create()
    app.add("frozen", heartbeat_ago=60)
    for n in range(3):
        app.add(f"ok{n}", heartbeat_ago=0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with restart_api(RestartApi()) as api, Beater(app, {"ok0", "ok1", "ok2"}):
        config = write_config(tmp_path, sqlite_url, api.url(), tmp_path / "marker")
        env = {
            **os.environ,
            "WATCHDOG_API_TOKEN": TOKEN,
            "WATCHDOG_HEALTH__ENABLED": "true",
            "WATCHDOG_HEALTH__PORT": str(port),
            "WATCHDOG_HEALTH__TOKEN_ENV": "HEALTH_TOKEN",
            "HEALTH_TOKEN": "health-secret",
        }
        proc = start_daemon(watchdogctl, config, tmp_path / "daemon.log", env)
        base, auth = f"http://127.0.0.1:{port}", {"Authorization": "Bearer health-secret"}
        try:
            wait_for(lambda: api.calls_for("frozen"), 30, "the first action")
            with httpx.Client(base_url=base, headers=auth, timeout=5) as client:
                wait_for(lambda: client.get("/readyz").status_code == 200, 15, "ready")
                assert client.get("/healthz").json()["alive"] is True
                assert httpx.get(base + "/healthz", timeout=5).status_code == 401
                status = client.get("/status").json()
                metrics_text = client.get("/metrics").text
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    assert [n["role"] for n in status["nodes"]] == ["leader"]
    assert [i["id"] for i in status["incidents"]] == ["frozen"]
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics_text)
        for s in family.samples
    }
    assert samples[("watchdog_leader", ())] == 1
    assert samples[("watchdog_instances", (("health", "unhealthy"),))] == 1
    assert samples[("watchdog_instances", (("health", "healthy"),))] == 3
    assert samples[("watchdog_actions_total", (("action", "detected"), ("outcome", "ok")))] == 1
    assert samples[("watchdog_cycle_duration_seconds_count", ())] >= 1
    app.dispose()


def test_the_daemon_wakes_at_the_next_deadline_not_the_next_tick(
    tmp_path: Path, sqlite_url: str, watchdogctl: str
) -> None:
    """interval = 5 s, yet an instance that stops beating is detected right when it crosses
    stale_after: each scan tells the daemon when the next healthy instance could turn stale."""
    app = AppTable(sqlite_url)
    app.create()
    for name in ("soon", "ok0", "ok1", "ok2"):
        app.add(name, heartbeat_ago=0)
    alive = {"soon", "ok0", "ok1", "ok2"}
    with restart_api(RestartApi()) as api, Beater(app, alive):
        config = write_config(tmp_path, sqlite_url, api.url(), tmp_path / "marker")
        env = {
            **os.environ,
            "WATCHDOG_API_TOKEN": TOKEN,
            "WATCHDOG_DETECTION__INTERVAL": "5",
            "WATCHDOG_DETECTION__STALE_AFTER": "5",
            "WATCHDOG_DETECTION__GRACE": "0",
        }
        log_path = tmp_path / "daemon.log"
        proc = start_daemon(watchdogctl, config, log_path, env)

        def detected() -> bool:
            result = ctl(watchdogctl, config, "audit", "--json", "--instance", "soon", token=TOKEN)
            return result.returncode == 0 and bool(json.loads(result.stdout))

        try:
            wait_for(lambda: '"started"' in log_path.read_text(), 20, "the daemon")
            alive.discard("soon")  # it freezes now, at a moment unrelated to the ticks
            wait_for(detected, 20, "detection")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    first = audit(watchdogctl, config, token=TOKEN, instance_id="soon")[0]
    assert first["action"] == "detected"
    # Woken by the deadline, not by the next 5 s tick: far less than one interval late.
    assert first["detail"]["overdue"] < 1.0  # type: ignore[index]
    app.dispose()
