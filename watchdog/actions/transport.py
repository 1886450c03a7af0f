"""An httpx transport whose connections are plain asyncio streams.

httpx's own transport reaches the socket through anyio, which wraps every read and write
in a cancel scope and asks sniffio which event loop runs it: a large share of each call's
CPU in a restart storm. The watchdog only ever runs on asyncio, so its restart calls
go through httpcore's connection pool (the same HTTP/1.1 machinery httpx uses) on the
`AsyncioBackend` below, httpcore's documented extension point for the network layer.
An httpx client given a transport ignores the proxies the environment names, so where
one is named the daemon keeps httpx's own clients (see `wiring._api_clients`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import re
import socket
import ssl
import urllib.request
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from watchdog.actions.api import HttpAnswer, load_lock_backend

_CLOSE_WAIT = 0.5  # seconds a closing connection may take to flush before it is aborted

# Every httpcore error, as the httpx error its own transport raises for it.
_ERRORS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)

_CORE_ERRORS = tuple(core for core, _httpx in _ERRORS)


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except _CORE_ERRORS as exc:
        raise _translate(exc) from exc


def _translate(exc: Exception) -> httpx.HTTPError:
    """The first (most specific) httpx error the table maps `exc`'s class to."""
    mapped = next(to for core, to in _ERRORS if isinstance(exc, core))
    return mapped(str(exc))


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError:
            raise httpcore.ReadTimeout(f"no data within {timeout}s") from None
        except OSError as exc:
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            self._writer.write(buffer)
            async with asyncio.timeout(timeout):
                await self._writer.drain()
        except TimeoutError:
            raise httpcore.WriteTimeout(f"could not send within {timeout}s") from None
        except OSError as exc:
            raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        self._writer.close()
        try:
            async with asyncio.timeout(_CLOSE_WAIT):
                await self._writer.wait_closed()
        except TimeoutError:
            self._writer.transport.abort()  # a peer that stopped reading cannot hold us
        except OSError:
            pass

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError:
            await self.aclose()
            raise httpcore.ConnectTimeout(f"TLS handshake not done within {timeout}s") from None
        except (OSError, ssl.SSLError) as exc:
            await self.aclose()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._writer.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._writer.get_extra_info("sockname")
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        if info == "socket":
            return self._writer.get_extra_info("socket")
        if info == "is_readable":
            # An idle keep-alive connection that reads anything was closed or broken by
            # the server: the pool must not send a request on it.
            return self._reader.at_eof() or self._writer.is_closing()
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network layer on asyncio streams."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        local = None if local_address is None else (local_address, 0)
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port, local_addr=local)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"not connected within {timeout}s") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        sock: socket.socket = writer.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return _Stream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _Body(httpx.AsyncByteStream):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        if hasattr(self._stream, "aclose"):
            with _as_httpx_errors():
                await self._stream.aclose()


class AsyncioTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over httpcore's pool on `AsyncioBackend`, verified with `verify`, with
    httpx's connection limits."""

    def __init__(self, verify: ssl.SSLContext, limits: httpx.Limits | None = None) -> None:
        limits = limits or httpx.Limits()
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=verify,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=AsyncioBackend(),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        with _as_httpx_errors():
            response = await self._pool.handle_async_request(_core_request(request))
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream),
            extensions=response.extensions,
        )

    async def exchange(
        self, request: httpcore.Request
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Status, headers and the whole body of `request`'s response; its connection
        goes back to the pool. Errors are httpx's."""
        with _as_httpx_errors():
            response = await self._pool.handle_async_request(request)
            try:
                body = await response.aread()
            finally:
                await response.aclose()
        return response.status, response.headers, body

    async def aclose(self) -> None:
        await self._pool.aclose()


def _core_request(request: httpx.Request) -> httpcore.Request:
    assert isinstance(request.stream, httpx.AsyncByteStream)
    return httpcore.Request(
        method=request.method,
        url=httpcore.URL(
            scheme=request.url.raw_scheme,
            host=request.url.raw_host,
            port=request.url.port,
            target=request.url.raw_path,
        ),
        headers=request.headers.raw,
        content=request.stream,
        extensions=request.extensions,
    )


# What httpx's client sends with every request unless told otherwise, but the body asked
# for uncompressed: only an error message reads it.
_DEFAULT_HEADERS = {
    "Accept": "*/*",
    "Accept-Encoding": "identity",
    "Connection": "keep-alive",
    "User-Agent": f"python-httpx/{httpx.__version__}",
}
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # httpx sends `Content-Length: 0` then
# A request target sent as it is: unreserved and reserved characters, and %-escapes.
_PLAIN_TARGET = re.compile(r"/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*")
_MAX_ORIGINS = 16
_QUOTED_BYTES = 64 * 1024  # of a compressed error body, unpacked at most


@dataclass(frozen=True, slots=True)
class _Origin:
    """Scheme, host and port of a URL, parsed once by httpx."""

    scheme: bytes
    host: bytes
    port: int | None
    netloc: bytes  # the Host header
    basic: str | None  # basic auth from the URL's userinfo
    shown: str  # as httpx writes it, without a trailing slash


class DirectClient:
    """Restart calls straight on httpcore's pool over `AsyncioTransport`.

    A restart call needs none of httpx's per-request machinery (auth flows, redirect
    handling, event hooks, the cookie jar, matching the URL against proxy mounts, its
    request and response models, parsing every URL in full), which cost much of each
    call's CPU in a storm. The scheme, host and port are parsed by httpx once per origin;
    a request target made only of characters a URL may carry as they are is sent as it is,
    any other URL goes through httpx's request model. `proxies_in_environment` says when
    this client must not be used: then httpx's client, which honours them, makes the calls."""

    def __init__(self, transport: AsyncioTransport) -> None:
        self._transport = transport
        self._origins: dict[str, _Origin | None] = {}

    async def call(
        self, method: str, url: str, *, headers: Mapping[str, str], timeout: float
    ) -> HttpAnswer:
        split = self._split(url)
        if split is None:
            request = _httpx_request(method, url, headers, timeout)
            answer = await self._transport.exchange(_core_request(request))
            shown = str(request.url)
        else:
            origin, target = split
            # As httpx merges them: the caller's headers over the defaults (names compared
            # without case), and credentials in the URL over any Authorization header.
            merged = {k.lower(): (k, v) for k, v in _DEFAULT_HEADERS.items()}
            merged.update((k.lower(), (k, v)) for k, v in headers.items())
            if origin.basic is not None:
                merged["authorization"] = ("Authorization", origin.basic)
            sent = [(b"Host", origin.netloc)]
            sent += [(k.encode(), v.encode()) for k, v in merged.values()]
            if method in _BODY_METHODS:
                sent.append((b"Content-Length", b"0"))
            core = httpcore.Request(
                method.encode(),
                httpcore.URL(
                    scheme=origin.scheme, host=origin.host, port=origin.port, target=target
                ),
                headers=sent,
                extensions={"timeout": _timeouts(timeout)},
            )
            answer = await self._transport.exchange(core)
            shown = origin.shown + target.decode()
        status, response_headers, body = answer
        return HttpAnswer(status, _text(response_headers, body), shown)

    def _split(self, url: str) -> tuple[_Origin, bytes] | None:
        """The URL's origin (parsed once) and request target, or None to parse it all."""
        scheme, sep, rest = url.partition("://")
        authority, slash, path = rest.partition("/")
        target = "/" + path
        if not sep or not slash or _PLAIN_TARGET.fullmatch(target) is None:
            return None
        key = f"{scheme}://{authority}"
        if key not in self._origins:
            if len(self._origins) >= _MAX_ORIGINS:
                self._origins.clear()
            self._origins[key] = _origin(key)
        origin = self._origins[key]
        return None if origin is None else (origin, target.encode("ascii"))

    async def __aenter__(self) -> DirectClient:
        load_lock_backend()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._transport.aclose()


def _origin(origin: str) -> _Origin | None:
    """`scheme://authority` parsed by httpx; None when httpx must handle the whole URL (a
    scheme it does not speak, a query or fragment right after the host, a bad URL): its
    errors are the ones the operator sees."""
    try:
        url = httpx.URL(origin + "/")
    except httpx.InvalidURL:
        return None
    if url.scheme not in ("http", "https") or url.query or url.fragment or url.raw_path != b"/":
        return None
    shown = str(url).rstrip("/")  # credentials and all: ApiRestart masks what it shows
    return _Origin(url.raw_scheme, url.raw_host, url.port, url.netloc, _basic(url), shown)


def _httpx_request(
    method: str, url: str, headers: Mapping[str, str], timeout: float
) -> httpx.Request:
    """Any URL, as httpx's client would send it (URL credentials as basic auth)."""
    request = httpx.Request(
        method,
        url,
        headers={**_DEFAULT_HEADERS, **headers},
        extensions={"timeout": _timeouts(timeout)},
    )
    basic = _basic(request.url)
    if basic is not None:
        request.headers["Authorization"] = basic
    return request


def _basic(url: httpx.URL) -> str | None:
    """The URL's credentials as a basic auth header, as httpx's client sends them."""
    user, password = url.username, url.password
    if not (user or password):
        return None
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@functools.lru_cache(maxsize=8)
def _timeouts(seconds: float) -> dict[str, float | None]:
    return httpx.Timeout(seconds).as_dict()


def _text(headers: list[tuple[bytes, bytes]], body: bytes) -> str:
    """The body as text, in the charset its Content-Type names (UTF-8 otherwise); a body
    the server compressed though asked not to is decompressed when it can be."""
    charset, encoding = "utf-8", b""
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-type":
            found = _CHARSET.search(value.decode("latin-1"))
            charset = found.group(1) if found else charset
        elif lowered == b"content-encoding":
            encoding = value.strip().lower()
    if encoding in (b"gzip", b"x-gzip", b"deflate"):
        for wbits in (zlib.MAX_WBITS | 32, -zlib.MAX_WBITS):  # gzip or zlib header; raw
            try:  # as much as a message can quote: a small body may unpack to gigabytes
                body = zlib.decompressobj(wbits).decompress(body, _QUOTED_BYTES)
                break
            except zlib.error:
                continue
    try:
        return body.decode(charset, errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


_CHARSET = re.compile(r"charset=[\"']?([\w.:-]+)", re.IGNORECASE)


def proxies_in_environment() -> bool:
    """Whether the environment names an HTTP proxy (which httpx's client would use)."""
    return any(scheme != "no" for scheme in urllib.request.getproxies_environment())
