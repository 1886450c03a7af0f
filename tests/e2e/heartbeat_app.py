"""A tiny application for the end-to-end tests: it hosts some instances and writes their
heartbeats into PostgreSQL every 0.2 s. Run by supervisord; frozen by the test (SIGSTOP),
or instance by instance through a control file: one `ID PID` line each freezes that
instance in that process only (a restart cures it), `ID *` in every process.

    python heartbeat_app.py DATABASE_URL PROCESS_NAME [--frozen CONTROL_FILE] ID [ID ...]
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psycopg


def frozen(control: Path | None) -> set[str]:
    """The ids this process must not beat for, as the control file says now."""
    if control is None or not control.exists():
        return set()
    me = str(os.getpid())
    lines = (line.split() for line in control.read_text().splitlines())
    return {words[0] for words in lines if len(words) == 2 and words[1] in (me, "*")}


def main() -> None:
    url, process, ids = sys.argv[1], sys.argv[2], sys.argv[3:]
    control = None
    if ids[:1] == ["--frozen"]:
        control, ids = Path(ids[1]), ids[2:]
    running = True

    def stop(_signo: int, _frame: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        for instance_id in ids:
            conn.execute(
                "INSERT INTO instances (id, connection_status, status_changed_at, "
                "last_heartbeat_at, process) VALUES (%s, 'CONNECTED', now(), now(), %s) "
                "ON CONFLICT (id) DO UPDATE SET connection_status = 'CONNECTED', "
                "status_changed_at = now(), force_reconnect = false",
                (instance_id, process),
            )
        while running:
            beating = [i for i in ids if i not in frozen(control)]
            conn.execute(
                "UPDATE instances SET last_heartbeat_at = now() WHERE id = ANY(%s)", (beating,)
            )
            time.sleep(0.2)


if __name__ == "__main__":
    main()
