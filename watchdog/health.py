"""The HTTP health endpoint (aiohttp.web), for probes, dashboards and Prometheus.

Routes (GET; HEAD too):

* `/healthz`: 200 `{"alive": true}` while the cycle loop runs, else 503.
* `/readyz`: 200 `{"ready": true, "reason": "ok"}` while the database answers and the
  last good cycle is recent; 503 with the reason otherwise.
* `/status`: 200 with the daemon's state as JSON (nodes, breakers, brake, incidents).
* `/metrics`: 200 in the Prometheus text format, version 0.0.4.

With a bearer token, every route (unknown ones too) wants `Authorization: Bearer <token>`
and answers 401 otherwise; the token is compared in constant time and never echoed.
A failing probe or status call answers 500 with one line and logs the traceback.

The server binds `settings.host` (loopback by default). Port 0 takes a free port; the
bound one is `server.port` once started.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final, Protocol

from aiohttp import web

from watchdog.config import HealthSettings
from watchdog.metrics import CONTENT_TYPE, Metrics
from watchdog.observability import get_logger
from watchdog.probes import redact

log = get_logger(component="health")

SHUTDOWN_TIMEOUT: Final = 5.0  # seconds stop() gives requests in progress
_MAX_ERROR: Final = 200  # characters of an exception message shown in a 500 body

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


class HealthServer:
    def __init__(
        self,
        settings: HealthSettings,
        source: HealthSource,
        metrics: Metrics,
        token: str | None = None,
    ) -> None:
        if token == "":
            raise ValueError("the health token is empty; pass None for no authentication")
        self._settings = settings
        self._source = source
        self._metrics = metrics
        self._token = token.encode("utf-8") if token is not None else None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when configured as 0)."""
        if self._port is None:
            raise RuntimeError("the health server is not running")
        return self._port

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the health server is already running")
        runner = web.AppRunner(
            self._application(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._settings.host, self._settings.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        log.info("health_endpoint_listening", host=self._settings.host, port=self._port)

    async def stop(self) -> None:
        """Close the listening socket and open connections; idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        try:
            await runner.cleanup()
        finally:
            self._port = None
            log.info("health_endpoint_stopped")

    # ----------------------------------------------------------------- routing

    def _application(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._status)
        app.router.add_get("/metrics", self._metrics_text)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authentication first, then turn any crash of a handler into a one-line 500."""
        if not self._authorised(request):
            return _json(
                {"error": "unauthorized: send Authorization: Bearer <token>"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="watchdog"'},
            )
        try:
            return await handler(request)
        except web.HTTPException:
            raise  # 404, 405 and the like: aiohttp's own answers
        except Exception as exc:
            log.exception("health_request_failed", path=request.path)
            return _json({"error": _one_line(request.path, exc)}, status=500)

    def _authorised(self, request: web.Request) -> bool:
        if self._token is None:
            return True
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        offered = credentials.strip().encode("utf-8", "surrogateescape")
        return hmac.compare_digest(offered, self._token)

    # ----------------------------------------------------------------- handlers

    async def _healthz(self, _request: web.Request) -> web.Response:
        alive = bool(self._source.alive())
        return _json({"alive": alive}, status=200 if alive else 503)

    async def _readyz(self, _request: web.Request) -> web.Response:
        ready, reason = self._source.ready()
        return _json({"ready": bool(ready), "reason": reason}, status=200 if ready else 503)

    async def _status(self, _request: web.Request) -> web.Response:
        return _json(await self._source.status())

    async def _metrics_text(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE})


_dumps = partial(json.dumps, default=str)  # datetimes and enums as their text


def _json(
    data: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=_dumps)


def _one_line(path: str, exc: Exception) -> str:
    message = redact(" ".join(str(exc).split()))
    if len(message) > _MAX_ERROR:
        message = message[: _MAX_ERROR - 3] + "..."
    text = f"{path} failed: {type(exc).__name__}"
    return f"{text}: {message}" if message else text
