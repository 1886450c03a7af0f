"""A tiny application for the end-to-end test: it hosts some instances and writes their
heartbeats into PostgreSQL every 0.2 s. Run by supervisord; frozen by the test (SIGSTOP).

    python heartbeat_app.py DATABASE_URL PROCESS_NAME ID [ID ...]
"""

from __future__ import annotations

import signal
import sys
import time

import psycopg


def main() -> None:
    url, process, ids = sys.argv[1], sys.argv[2], sys.argv[3:]
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
            conn.execute(
                "UPDATE instances SET last_heartbeat_at = now() WHERE id = ANY(%s)", (ids,)
            )
            time.sleep(0.2)


if __name__ == "__main__":
    main()
