"""The HTTP health endpoint, for probes, dashboards and Prometheus.

Routes (GET; HEAD too):

* `/healthz`: 200 `{"alive": true}` while the cycle loop runs, else 503.
* `/readyz`: 200 `{"ready": true, "reason": "ok"}` while the database answers and the
  last good cycle is recent; 503 with the reason otherwise.
* `/status`: 200 with the daemon's state as JSON (nodes, breakers, brake, incidents).
* `/metrics`: 200 in the Prometheus text format, version 0.0.4.
* `/` (`?page=N`): the read-only status page, HTML; `/instances/ID`: one instance's page
  (what `explain` shows and its audit trail), 404 with a page when it is unknown. Both
  carry a strict Content-Security-Policy (no script, no outside asset) and `no-store`.

With a bearer token, every route (unknown ones too) wants `Authorization: Bearer <token>`
and answers 401 otherwise; the token is compared in constant time and never echoed.
A failing probe or status call answers 500 with one line and logs the traceback.

A small HTTP/1.1 server on asyncio streams (a web framework would cost megabytes of
resident memory for a few read-only routes): one request per connection, answered with
`Connection: close`; a request head must arrive within `HEAD_TIMEOUT` and fit in
`HEAD_LIMIT` bytes (408 and 431 otherwise), so a slow or oversized client costs nothing
but its own connection.

The server binds `settings.host` (loopback by default). Port 0 takes a free port; the
bound one is `server.port` once started.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, Protocol
from urllib.parse import parse_qs, unquote

from watchdog.config import HealthSettings
from watchdog.core.errors import ConfigError, describe
from watchdog.daemon.metrics import CONTENT_TYPE, Metrics
from watchdog.masking import mask_urls_in
from watchdog.observability import get_logger
from watchdog.web.page import CONTENT_SECURITY_POLICY, not_found

log = get_logger(component="health")

SHUTDOWN_TIMEOUT: Final = 5.0  # seconds stop() gives requests in progress
HEAD_TIMEOUT: Final = 10.0  # seconds a client has to send its request head
HEAD_LIMIT: Final = 16 * 1024  # bytes of request line and headers
_WRITE_TIMEOUT: Final = 10.0  # seconds a client has to take the answer
_LINGER: Final = 2.0  # seconds to wait for the client's close after answering
_LINGER_BYTES: Final = 64 * 1024  # unread request bytes drained before closing anyway
_MAX_ERROR: Final = 200  # characters of an exception message shown in a 500 body
_METHODS: Final = ("GET", "HEAD")
_JSON: Final = "application/json; charset=utf-8"
_STATUS_TEXT: Final = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class HealthSource(Protocol):
    """What the endpoint asks the daemon. `alive` and `ready` must be cheap (no I/O):
    probes call them often, and a hung database must not hang the probe."""

    def alive(self) -> bool:
        """The cycle loop is alive: its last cycle attempt was within a few intervals."""
        ...

    def ready(self) -> tuple[bool, str]:
        """The database is reachable and the last good cycle is at most `ready_max_age`
        old; the reason says what is wrong when not (and "ok" when it is)."""
        ...

    async def status(self) -> dict[str, Any]:
        """JSON-ready state: nodes, breakers, brake, incidents."""
        ...


class PageSource(Protocol):
    """The status page's HTML, read from the database now."""

    async def status_page(self, number: int) -> str: ...

    async def instance_page(self, instance_id: str) -> str | None:
        """None: no such instance."""
        ...


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case; values as sent (latin-1 text)
    query: str = ""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = _JSON
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self, *, with_body: bool) -> bytes:
        """Status line, headers and (unless answering HEAD) the body."""
        lines = [
            f"HTTP/1.1 {self.status} {_STATUS_TEXT.get(self.status, 'Unknown')}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.headers.items()),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head + self.body if with_body else head


Route = Callable[[], Awaitable[Response]]


class HealthServer:
    def __init__(
        self,
        settings: HealthSettings,
        source: HealthSource,
        metrics: Metrics,
        token: str | None = None,
        pages: PageSource | None = None,
    ) -> None:
        if token == "":
            raise ValueError("the health token is empty; pass None for no authentication")
        self._settings = settings
        self._source = source
        self._metrics = metrics
        self._token = token.encode("utf-8") if token is not None else None
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._pages = pages
        self._routes: dict[str, Route] = {
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/status": self._status,
            "/metrics": self._metrics_text,
        }

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when configured as 0)."""
        if self._port is None:
            raise RuntimeError("the health server is not running")
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the health server is already running")
        # A taken port fails here, before anything is left to clean up.
        where = f"{self._settings.host}:{self._settings.port}"
        try:
            server = await asyncio.start_server(
                self._serve, self._settings.host, self._settings.port, limit=HEAD_LIMIT
            )
        except OSError as exc:
            raise ConfigError(
                f"config error: health.port: cannot listen on {where}: {exc.strerror}; "
                "another daemon may hold it: stop it or choose another [health] port"
            ) from None
        self._server = server
        self._port = int(server.sockets[0].getsockname()[1])
        log.info("health_endpoint_listening", host=self._settings.host, port=self._port)

    async def stop(self) -> None:
        """Close the listening socket and open connections; idempotent. Requests in
        progress get `SHUTDOWN_TIMEOUT` to finish, then are cancelled."""
        server, self._server = self._server, None
        if server is None:
            return
        try:
            server.close()
            for writer in self._connections.values():
                writer.close()  # a request still being read ends now
            tasks = set(self._connections)
            if tasks:
                _done, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT)
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.wait(pending, timeout=1.0)
            with suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), SHUTDOWN_TIMEOUT)
        finally:
            self._port = None
            log.info("health_endpoint_stopped")

    # ---------------------------------------------------------------- serving

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: read one request, answer it, close."""
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            answer = await self._answer(reader)
            if answer is not None:
                response, with_body = answer
                writer.write(response.encode(with_body=with_body))
                await asyncio.wait_for(writer.drain(), _WRITE_TIMEOUT)
                await _linger(reader, writer)
        except (ConnectionError, TimeoutError):
            pass  # the client left or stalled: nothing more to say
        finally:
            writer.close()
            with suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), _WRITE_TIMEOUT)
            del self._connections[task]

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[Response, bool] | None:
        """The response and whether it carries a body; None when the client left."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except asyncio.IncompleteReadError:
            return None  # closed before a whole request head
        except asyncio.LimitOverrunError:
            return _error(431, "request head too large"), True
        except TimeoutError:
            return _error(408, "request head not received in time"), True
        request = _parse(head)
        if request is None:
            return _error(400, "malformed request"), True
        with_body = request.method != "HEAD"
        if not self._authorised(request):
            challenge = {"WWW-Authenticate": 'Bearer realm="watchdog"'}
            message = "unauthorized: send Authorization: Bearer <token>"
            return _error(401, message, challenge), with_body
        route = self._route(request)
        if route is None:
            return _error(404, "not found"), with_body
        if request.method not in _METHODS:
            allow = {"Allow": ", ".join(_METHODS)}
            return _error(405, f"method {request.method} not allowed", allow), with_body
        try:
            return await route(), with_body
        except Exception as exc:
            log.exception("health_request_failed", path=request.path)
            return _error(500, _failure(request.path, exc)), with_body

    def _authorised(self, request: Request) -> bool:
        if self._token is None:
            return True
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        # The header's bytes as sent (latin-1 round-trips them), against the token's UTF-8.
        offered = credentials.strip().encode("latin-1")
        return hmac.compare_digest(offered, self._token)

    def _route(self, request: Request) -> Route | None:
        route = self._routes.get(request.path)
        if route is not None or self._pages is None:
            return route
        pages = self._pages
        if request.path == "/":
            number = _page_number(request.query)
            return lambda: _html(pages.status_page(number))
        if request.path.startswith(_INSTANCE) and len(request.path) > len(_INSTANCE):
            instance_id = unquote(request.path[len(_INSTANCE) :], errors="replace")
            return lambda: _instance_html(pages, instance_id)
        return None

    # ----------------------------------------------------------------- routes

    async def _healthz(self) -> Response:
        alive = bool(self._source.alive())
        return _json({"alive": alive}, status=200 if alive else 503)

    async def _readyz(self) -> Response:
        ready, reason = self._source.ready()
        return _json({"ready": bool(ready), "reason": reason}, status=200 if ready else 503)

    async def _status(self) -> Response:
        return _json(await self._source.status())

    async def _metrics_text(self) -> Response:
        return Response(200, self._metrics.render(), CONTENT_TYPE)


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then read what the client still sends (the rest of an oversized or
    refused request) until it closes too, for at most `_LINGER` seconds and
    `_LINGER_BYTES`: closing with unread input resets the connection, and a reset can
    discard the answer before the client has read it."""
    if not writer.can_write_eof():
        return
    writer.write_eof()
    deadline = asyncio.get_running_loop().time() + _LINGER
    received = 0
    while received < _LINGER_BYTES:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return
        chunk = await asyncio.wait_for(reader.read(_LINGER_BYTES), left)
        if not chunk:
            return
        received += len(chunk)


def _parse(head: bytes) -> Request | None:
    """The request line and headers, or None when they are not HTTP/1.x."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha():
        return None
    method, target, _version = parts
    path, _, query = target.partition("?")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            return None
        headers[name.lower()] = value.strip()
    return Request(method.upper(), path, headers, query)


_dumps = partial(json.dumps, default=str)  # datetimes and enums as their text


def _json(
    data: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(status, _dumps(data).encode("utf-8"), headers=headers or {})


_INSTANCE: Final = "/instances/"
_HTML: Final = "text/html; charset=utf-8"
_PAGE_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _page_number(query: str) -> int:
    """`?page=N`; anything else is the first page."""
    values = parse_qs(query).get("page", ["1"])
    try:
        return max(1, min(int(values[0]), 1_000_000))
    except ValueError:
        return 1


async def _html(rendering: Awaitable[str], status: int = 200) -> Response:
    text = await rendering
    return Response(status, text.encode("utf-8"), _HTML, dict(_PAGE_HEADERS))


async def _instance_html(pages: PageSource, instance_id: str) -> Response:
    text = await pages.instance_page(instance_id)
    if text is None:
        return Response(404, not_found(instance_id).encode("utf-8"), _HTML, dict(_PAGE_HEADERS))
    return Response(200, text.encode("utf-8"), _HTML, dict(_PAGE_HEADERS))


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json({"error": message}, status=status, headers=headers)


def _failure(path: str, exc: Exception) -> str:
    message = mask_urls_in(describe(exc))
    if len(message) > _MAX_ERROR:
        message = message[: _MAX_ERROR - 3] + "..."
    return f"{path} failed: {message}"
