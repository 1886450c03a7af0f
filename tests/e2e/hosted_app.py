"""An application hosting several instances in one process, for the end-to-end tests of
process restarts: it writes their heartbeats into PostgreSQL every 0.2 s, except for the
instances the test freezes in a control file, one `ID PID` line each (frozen in that
process only: a restart cures it) or `ID *` (frozen in every process).

    python hosted_app.py DATABASE_URL PROCESS_NAME CONTROL_FILE ID [ID ...]
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psycopg


def frozen(control: Path) -> set[str]:
    """The ids this process must not beat for, as the control file says now."""
    me = str(os.getpid())
    try:
        lines = control.read_text().splitlines()
    except FileNotFoundError:
        return set()
    return {
        words[0]
        for words in (line.split() for line in lines)
        if len(words) == 2 and words[1] in (me, "*")
    }


def main() -> None:
    url, process, control, ids = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4:]
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
