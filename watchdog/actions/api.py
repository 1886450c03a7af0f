"""API_RESTART: ask the application's own HTTP API to restart one instance.

httpx errors and HTTP statuses are translated into RecoveryErrors here, so the engine
only sees whether a retry may help. The bearer token never appears in results or errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import NamedTuple, Protocol
from urllib.parse import quote

import anyio
import httpx

from watchdog.actions.naming import check_placeholders
from watchdog.core.errors import (
    InvalidTarget,
    PermanentRecoveryError,
    RecoveryError,
    TransientRecoveryError,
    describe,
    squeeze,
)
from watchdog.core.model import Action, ActionResult, Target
from watchdog.masking import check_token, mask_url

# Statuses that mean "busy or briefly down", worth retrying later.
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
_BODY_CHARS = 200
_METHOD = re.compile(r"[A-Z]+")
_DOT_SEGMENTS = frozenset({"", ".", ".."})


class HttpAnswer(NamedTuple):
    """What a restart call's answer is read for."""

    status: int
    text: str  # the body, decoded: only an error message quotes it
    url: str  # the URL as sent


class HttpClient(Protocol):
    """What ApiRestart asks of a client: one call, its body read and its connection back
    in the pool (a `DirectClient`, or httpx's own client as an `HttpxClient`)."""

    async def call(
        self, method: str, url: str, *, headers: Mapping[str, str], timeout: float
    ) -> HttpAnswer: ...


class HttpxClient:
    """An httpx.AsyncClient as an HttpClient: it honours the proxies the environment names."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def call(
        self, method: str, url: str, *, headers: Mapping[str, str], timeout: float
    ) -> HttpAnswer:
        request = self._client.build_request(method, url, headers=headers, timeout=timeout)
        response = await self._client.send(request)
        return HttpAnswer(response.status_code, response.text, str(request.url))

    async def __aenter__(self) -> HttpxClient:
        load_lock_backend()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._client.aclose()


def load_lock_backend() -> None:
    """httpcore's pools take their locks from anyio, which loads its asyncio backend (some
    thirty modules) on the first request: a client entered at start-up loads it then, not
    in the first call of a restart storm."""
    anyio.Lock()


class HttpClients:
    """HTTP clients for concurrent calls: each call in flight takes one of its own while
    there are enough, and calls beyond that share the first.

    httpcore's pool walks all of a client's connections on every request, probing each
    idle one with a system call and counting the idle ones for each (quadratic in the
    connections): in a storm of 16 concurrent calls that was a seventh of the daemon's
    CPU. Clients of one connection each skip it; size the set to the concurrency."""

    def __init__(self, clients: Sequence[HttpClient]) -> None:
        if not clients:
            raise ValueError("HttpClients needs at least one client")
        self._shared = clients[0]
        self._idle = list(reversed(clients))  # popped from the end: the first goes first

    @contextmanager
    def lease(self) -> Iterator[HttpClient]:
        if not self._idle:
            yield self._shared
            return
        client = self._idle.pop()
        try:
            yield client
        finally:
            self._idle.append(client)  # last in, first out: its connection is the warmest


def check_api(url_template: str, method: str, token: str | None, timeout: float) -> None:
    """Raise ValueError, naming the configuration key, on settings the rung cannot use."""
    check_placeholders("api.restart_url", mask_url(url_template), ("{id}",))
    if _METHOD.fullmatch(method.upper()) is None:
        raise ValueError(f"api.method must be an HTTP method such as POST, got {method!r}")
    if timeout <= 0:
        raise ValueError(f"api.timeout must be positive, got {timeout!r}")
    if token:
        check_token(token, "the variable api.token_env names")


class ApiRestart:
    """Send `method url_template` with `{id}` replaced by the URL-quoted instance id."""

    def __init__(
        self,
        client: HttpClient | HttpClients,
        url_template: str,
        method: str = "POST",
        token: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        check_api(url_template, method, token, timeout)
        method = method.upper()
        self._clients = client if isinstance(client, HttpClients) else HttpClients([client])
        self._url_template = url_template
        self._method = method
        self._token = token or None
        self._timeout = timeout

    @property
    def action(self) -> Action:
        return Action.API_RESTART

    @property
    def timeout(self) -> float:
        return self._timeout

    def key(self, target: Target) -> str:
        return target.instance_id

    def url_for(self, target: Target) -> str:
        """The URL for `target`; raises on an id that cannot be a path segment."""
        instance_id = target.instance_id
        if instance_id in _DOT_SEGMENTS:
            raise InvalidTarget(
                f"unsafe instance id {instance_id!r} for the restart URL: an empty, '.' or "
                "'..' path segment would address another endpoint; rename the instance"
            )
        # safe="" so that an id cannot add path segments, a query or a fragment; dots
        # encoded too, so that no client or proxy can read one as a dot segment.
        segment = quote(instance_id, safe="").replace(".", "%2E")
        return self._url_template.replace("{id}", segment)

    async def recover(self, target: Target) -> ActionResult:
        url = self.url_for(target)
        answer = await self._send(url)
        shown = mask_url(answer.url)  # as sent, not as templated
        if 200 <= answer.status < 300:
            return ActionResult(detail={"status": answer.status, "url": shown})
        raise self._status_error(answer, shown)

    async def _send(self, url: str) -> HttpAnswer:
        # The headers stay out of this frame's locals and the httpx error (whose request
        # carries them) is not chained, so tracebacks that print locals never show the token.
        what = f"HTTP {self._method} {mask_url(url)}"
        try:
            with self._clients.lease() as client:
                return await client.call(
                    self._method, url, headers=self._headers(), timeout=self._timeout
                )
        except httpx.TimeoutException as exc:
            error = self._error(
                f"{what} timed out after {self._timeout:g}s ({describe(exc)})", transient=True
            )
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            error = self._error(f"{what}: bad url: {describe(exc)}", transient=False)
        except httpx.TransportError as exc:
            # Refused, reset, DNS failure, proxy trouble: the far side may come back.
            error = self._error(f"{what} failed: {describe(exc)}", transient=True)
        raise error from None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _status_error(self, answer: HttpAnswer, shown: str) -> RecoveryError:
        code = answer.status
        body = squeeze(answer.text[: _BODY_CHARS * 4])[:_BODY_CHARS]
        message = f"HTTP {code} from {self._method} {shown}: {body}"
        return self._error(message, transient=code in TRANSIENT_STATUSES)

    def _error(self, message: str, *, transient: bool) -> RecoveryError:
        """A RecoveryError with the token masked, in case a server or library echoes it."""
        if self._token:
            message = message.replace(self._token, "***")
        if transient:
            return TransientRecoveryError(message)
        return PermanentRecoveryError(message)
