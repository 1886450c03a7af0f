"""Graceful shutdown of the installed `watchdogctl run` (seed 002): SIGTERM lets the
action in flight finish and records its outcome; a second signal exits at once, and the
intent left without an outcome is reconciled as `interrupted` at the next start."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.apptable import AppTable
from tests.e2e.helpers import audit, ctl, start_daemon, watchdog_env
from tests.e2e.test_daemon import TOKEN, write_config
from tests.httpapp import RestartApi, restart_api
from tests.waiting import wait_for


@contextmanager
def held_api_and_daemon(
    tmp_path: Path, sqlite_url: str, watchdogctl: str
) -> Iterator[tuple[RestartApi, subprocess.Popen[bytes], Path, Path]]:
    """A frozen instance whose first api_restart is held by the server until the test
    opens the gate; the daemon running against it."""
    app = AppTable(sqlite_url)
    app.create()
    app.add("frozen", heartbeat_ago=60)
    app.add("healthy", heartbeat_ago=0)
    api = RestartApi(gate=threading.Event())
    log = tmp_path / "daemon.log"
    with restart_api(api):
        config = write_config(tmp_path, sqlite_url, api.url(), tmp_path / "marker")
        proc = start_daemon(watchdogctl, config, log, watchdog_env(TOKEN))
        try:
            wait_for(lambda: api.calls_for("frozen"), 30, "the first api_restart to arrive")
            yield api, proc, config, log
        finally:
            assert api.gate is not None
            api.gate.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    app.dispose()


def _stopping(log: Path) -> bool:
    return '"event": "stopping"' in log.read_text()


def test_sigterm_lets_the_action_in_flight_finish_and_records_it(
    tmp_path: Path, sqlite_url: str, watchdogctl: str
) -> None:
    with held_api_and_daemon(tmp_path, sqlite_url, watchdogctl) as (api, proc, config, log):
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: _stopping(log), 10, "the daemon to log that it is stopping")
        assert proc.poll() is None, "it exited with the action still in flight"
        assert api.gate is not None
        api.gate.set()
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()[-2000:]
    trail = [
        (r["action"], r["outcome"])
        for r in audit(watchdogctl, config, token=TOKEN, instance_id="frozen")
    ]
    assert trail == [("detected", "ok"), ("api_restart", "started"), ("api_restart", "ok")]
    assert len(api.calls_for("frozen")) == 1


def test_a_second_signal_exits_at_once_and_the_next_start_reconciles(
    tmp_path: Path, sqlite_url: str, watchdogctl: str
) -> None:
    with held_api_and_daemon(tmp_path, sqlite_url, watchdogctl) as (api, proc, config, log):
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: _stopping(log), 10, "the daemon to log that it is stopping")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)  # the held call would keep a graceful stop for 30 s
        assert code == 1
        assert "second_signal_exiting_now" in log.read_text()
        assert [r["outcome"] for r in audit(watchdogctl, config, token=TOKEN)][-1] == "started"

        again = ctl(watchdogctl, config, "run", "--once", token=TOKEN)
        assert again.returncode == 0, again.stderr
    trail = [
        (r["action"], r["outcome"], r["attempt"])
        for r in audit(watchdogctl, config, token=TOKEN, instance_id="frozen")
    ]
    assert trail[:3] == [
        ("detected", "ok", 0),
        ("api_restart", "started", 1),
        ("api_restart", "interrupted", 1),
    ]
    # Never silently repeated: attempt 1 is not sent again.
    assert [a for _action, _outcome, a in trail].count(1) == 2
    assert len(api.calls_for("frozen")) == len({a for *_x, a in trail if a >= 1}), trail


def test_sigterm_while_waiting_for_the_database_at_start_is_a_clean_stop(
    tmp_path: Path, watchdogctl: str
) -> None:
    """Nothing listens on the database's port: the daemon waits (logging it once), and a
    SIGTERM meanwhile exits 0, not by the default signal action (-15)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "watchdog.toml"
    config.write_text(
        f'[database]\nurl = "postgresql://watchdog@127.0.0.1:{port}/app"\ntimeout = 1.0\n'
        "[detection]\ninterval = 0.2\n"
    )
    log = tmp_path / "daemon.log"
    proc = start_daemon(watchdogctl, config, log, watchdog_env(TOKEN))
    try:
        wait_for(lambda: "database_unavailable_at_start" in log.read_text(), 20, "waiting")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log.read_text()
    assert code == 0, text[-2000:]
    assert text.count("database_unavailable_at_start") == 1  # logged once, not per retry
