"""A real HTTP server standing in for the application's restart endpoint.

It records every request and, for the ids it is told to, really cures the instance by
writing a fresh heartbeat into the database, as the application would.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_PATH = re.compile(r"^/api/instances/([^/]+)/restart$")


@dataclass
class Recorded:
    method: str
    instance_id: str
    authorization: str | None


@dataclass
class RestartApi:
    on_restart: Callable[[str], None] = lambda _id: None
    status: int = 200
    requests: list[Recorded] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # every request's raw path, matched or not
    port: int = 0
    # When set, every call is held (recorded, unanswered) until the gate opens (30 s cap).
    gate: threading.Event | None = None

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/instances/{{id}}/restart"

    def calls_for(self, instance_id: str) -> list[Recorded]:
        return [r for r in list(self.requests) if r.instance_id == instance_id]


def _handler(api: RestartApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            api.paths.append(self.path)
            match = _PATH.match(self.path)
            if not match:
                self.send_error(404)
                return
            instance_id = match.group(1)
            api.requests.append(Recorded("POST", instance_id, self.headers.get("Authorization")))
            if api.gate is not None:
                api.gate.wait(30)
            if api.status == 200:
                api.on_restart(instance_id)
            body = b'{"ok": true}'
            self.send_response(api.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


class _Server(ThreadingHTTPServer):
    request_queue_size = 64  # the default 5 drops a burst's connects (1 s SYN retransmit)


@contextmanager
def restart_api(api: RestartApi) -> Iterator[RestartApi]:
    server = _Server(("127.0.0.1", 0), _handler(api))
    api.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
