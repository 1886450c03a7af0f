"""The application's side for the daemon scenarios: a heartbeat writer and a restart API."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg

_PATH = re.compile(r"^/api/instances/([^/]+)/restart$")


class Beater:
    """One bulk UPDATE a second: every instance beats except those `frozen(t)` names,
    `t` being seconds since the writer started."""

    def __init__(self, conninfo: str, frozen: Callable[[float], set[str]]) -> None:
        self._conninfo = conninfo
        self._frozen = frozen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="beater", daemon=True)
        self.started = 0.0
        self.beats = 0
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            with psycopg.connect(self._conninfo, autocommit=True) as conn:
                while not self._stop.is_set():
                    frozen = sorted(self._frozen(time.monotonic() - self.started))
                    conn.execute(
                        "UPDATE instances SET last_heartbeat_at = now() WHERE NOT (id = ANY(%s))",
                        (frozen,),
                    )
                    self.beats += 1
                    self._stop.wait(1.0 - (time.monotonic() - self.started) % 1.0)
        except BaseException as exc:  # reported by the scenario
            self.error = exc

    def __enter__(self) -> Beater:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


class _Server(ThreadingHTTPServer):
    # The listen backlog is fixed when the constructor listens: a class attribute, not one
    # set afterwards. With the default of 5, a storm's 16 simultaneous connects overflowed
    # it and the dropped ones waited out a 1 s SYN retransmit, idling their slots.
    request_queue_size = 128
    daemon_threads = True


class RestartApi:
    """A ThreadingHTTPServer that answers every restart after `delay` seconds and records
    (wall time of receipt, instance id)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.received: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}/api/instances/{{id}}/restart"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as two writes: with Nagle's algorithm the second
            # waits for the client's delayed ACK (~40 ms), doubling the 50 ms answer.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                match = _PATH.match(self.path)
                if not match:
                    self.send_error(404)
                    return
                with api._lock:
                    api.received.append((time.time(), match.group(1)))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                time.sleep(api.delay)
                body = b'{"ok": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        return Handler

    def __enter__(self) -> RestartApi:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def write_config(path: Path, body: str) -> Path:
    path.write_text(body)
    return path
