"""The recovery backends against real things: an HTTP server on a loopback port, a closed
port, real child processes. Only the instance store is faked (its adapter lives elsewhere).
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import gzip
import json
import os
import socket
import ssl
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from watchdog.actions.api import ApiRestart, HttpClient, HttpClients, HttpxClient
from watchdog.actions.command import CommandRestart
from watchdog.actions.db_flag import DbFlag
from watchdog.actions.transport import AsyncioTransport, DirectClient
from watchdog.core.errors import (
    PermanentRecoveryError,
    RecoveryError,
    StoreUnavailable,
    TransientRecoveryError,
)
from watchdog.core.model import Action, Finding, Generation, Scan, Target
from watchdog.core.ports import GenerationSource, Recovery
from watchdog.wiring import api_tls

TOKEN = "s3cr3t-t0ken-value"  # a test value, asserted never to leak
ECHO_AUTH = "<echo the Authorization header>"

# ----------------------------------------------------------------- HTTP server


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    authorization: str | None
    headers: dict[str, str] = field(default_factory=dict, compare=False)
    authorizations: list[str] = field(default_factory=list, compare=False)  # every one sent


@dataclass
class FakeApi:
    """What the server was asked, and how it should answer each path."""

    base: str = ""
    requests: list[Seen] = field(default_factory=list)
    responses: dict[str, tuple[int, str]] = field(default_factory=dict)
    # Answers given as they go on the wire: status, headers, body bytes.
    raw: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)


class _Server(ThreadingHTTPServer):
    api: FakeApi


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean

    def _handle(self) -> None:
        api = self.server.api
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        auth = self.headers.get("Authorization")
        every = self.headers.get_all("Authorization") or []
        seen = Seen(self.command, self.path, auth, dict(self.headers.items()), every)
        api.requests.append(seen)
        if self.path.startswith("/slow/"):
            api.release.wait(10)  # released at teardown; the client gives up long before
            self.close_connection = True
            return
        if self.path.startswith("/reset/"):
            # Linger 0 makes close() send a TCP RST instead of a FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return
        if self.path in api.raw:
            status, headers, raw = api.raw[self.path]
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(raw))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(raw)
            return
        status, body = api.responses.get(self.path, (200, "restarting"))
        data = (auth or "" if body == ECHO_AUTH else body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def api() -> Iterator[FakeApi]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.api = FakeApi(base=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield server.api
    finally:
        server.api.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(params=["direct", "asyncio", "httpx"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[HttpClient]:
    """Each ApiRestart test runs on the daemon's direct client, on httpx's client over the
    daemon's transport (when a proxy is configured) and on httpx's own."""
    if request.param == "direct":
        async with DirectClient(AsyncioTransport(api_tls("http://"))) as direct:
            yield direct
        return
    # trust_env=False: a proxy from the environment must not intercept loopback requests.
    # verify=False: plain HTTP only, and it skips loading the CA bundle for every test.
    transport = AsyncioTransport(api_tls("http://")) if request.param == "asyncio" else None
    async with httpx.AsyncClient(trust_env=False, verify=False, transport=transport) as http:
        yield HttpxClient(http)


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A loopback port that is bound but not listening, so connects are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/restart/{{id}}"


def _assert_no_token(exc: BaseException) -> None:
    assert TOKEN not in str(exc)
    assert TOKEN not in repr(exc.args)
    assert exc.__cause__ is None  # the httpx error carries the request headers


# --------------------------------------------------------------------- ApiRestart


async def test_api_restart_sends_quoted_id_and_bearer_token(
    api: FakeApi, client: HttpClient
) -> None:
    restart = ApiRestart(client, api.base + "/restart/{id}", token=TOKEN)
    result = await restart.recover(Target("a/b c?d#e", None))
    quoted = "a%2Fb%20c%3Fd%23e"
    assert result.detail == {"status": 200, "url": f"{api.base}/restart/{quoted}"}
    assert TOKEN not in repr(result)
    assert api.requests == [Seen("POST", f"/restart/{quoted}", f"Bearer {TOKEN}")]


@pytest.mark.parametrize(
    ("instance_id", "path"),
    [
        ("%2e%2e", "/restart/%252e%252e/x"),
        ("a.b", "/restart/a%2Eb/x"),
        ("...", "/restart/%2E%2E%2E/x"),
        ("./..", "/restart/%2E%2F%2E%2E/x"),
    ],
)
async def test_an_id_of_dots_stays_one_path_segment_and_the_audit_names_the_sent_url(
    api: FakeApi, client: HttpClient, instance_id: str, path: str
) -> None:
    restart = ApiRestart(client, api.base + "/restart/{id}/x")
    result = await restart.recover(Target(instance_id, None))
    assert api.requests == [Seen("POST", path, None)]
    assert result.detail["url"] == api.base + path


@pytest.mark.parametrize("instance_id", ["", ".", ".."])
async def test_an_id_that_is_a_dot_segment_is_refused_without_a_request(
    api: FakeApi, client: HttpClient, instance_id: str
) -> None:
    restart = ApiRestart(client, api.base + "/restart/{id}/x")
    with pytest.raises(PermanentRecoveryError, match="unsafe instance id"):
        await restart.recover(Target(instance_id, None))
    assert api.requests == []


async def test_a_failed_call_names_the_url_as_sent(refused_url: str, client: HttpClient) -> None:
    restart = ApiRestart(client, refused_url)
    with pytest.raises(TransientRecoveryError) as caught:
        await restart.recover(Target("a.b", None))
    assert refused_url.replace("{id}", "a%2Eb") in str(caught.value)


async def test_api_restart_imports_nothing_per_call(
    api: FakeApi, client: HttpClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed import is retried (a path scan) every time: httpcore looks for sniffio
    on every pool lock, so without it a restart storm spends its CPU in importlib."""
    restart = ApiRestart(client, api.base + "/restart/{id}")
    await restart.recover(Target("warm", None))  # lazy imports of the first call
    failed: list[str] = []
    real_import = builtins.__import__

    def counting_import(name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return real_import(name, *args, **kwargs)
        except ImportError:
            failed.append(name)
            raise

    monkeypatch.setattr(builtins, "__import__", counting_import)
    for n in range(5):
        await restart.recover(Target(f"w{n}", None))
    assert failed == []


async def test_api_client_over_plain_http_carries_no_ca_bundle_and_still_works(
    api: FakeApi,
) -> None:
    tls = api_tls(api.base + "/restart/{id}")
    assert isinstance(tls, ssl.SSLContext)
    assert tls.cert_store_stats()["x509_ca"] == 0  # the bundle is what costs memory
    assert (tls.verify_mode, tls.check_hostname) == (ssl.CERT_REQUIRED, True)  # fails closed
    async with HttpxClient(httpx.AsyncClient(timeout=5.0, verify=tls)) as client:
        result = await ApiRestart(client, api.base + "/restart/{id}").recover(Target("h", None))
    assert result.detail["status"] == 200
    verified = api_tls("HTTPS://app.example/restart/{id}")
    assert verified.cert_store_stats()["x509_ca"] > 0
    assert (verified.verify_mode, verified.check_hostname) == (ssl.CERT_REQUIRED, True)


async def test_concurrent_calls_each_lease_a_client_of_their_own(api: FakeApi) -> None:
    raw = [httpx.AsyncClient(timeout=5.0) for _ in range(3)]
    clients = [HttpxClient(client) for client in raw]
    http = HttpClients(clients)
    with http.lease() as a, http.lease() as b, http.lease() as c, http.lease() as d:
        assert {id(a), id(b), id(c)} == {id(x) for x in clients}  # one each while they last
        assert d is clients[0]  # beyond them, calls share the first
    with http.lease() as again:
        assert again is a  # the one given back last goes out first: its connection is warm
    restart = ApiRestart(http, api.base + "/restart/{id}")
    results = await asyncio.gather(*(restart.recover(Target(f"c{n}", None)) for n in range(6)))
    assert [r.detail["status"] for r in results] == [200] * 6
    assert sorted(r.path for r in api.requests) == sorted(f"/restart/c{n}" for n in range(6))
    for client in raw:
        await client.aclose()


async def test_api_restart_without_token_sends_no_authorization(
    api: FakeApi, client: HttpClient
) -> None:
    restart = ApiRestart(client, api.base + "/v1/{id}/restart", method="put")
    result = await restart.recover(Target("w1", "proc"))
    assert result.detail["status"] == 200
    assert api.requests == [Seen("PUT", "/v1/w1/restart", None)]


async def test_api_restart_accepts_any_2xx(api: FakeApi, client: HttpClient) -> None:
    api.responses["/restart/w1"] = (202, "")
    result = await ApiRestart(client, api.base + "/restart/{id}").recover(Target("w1", None))
    assert result.detail["status"] == 202


@pytest.mark.parametrize("status", [429, 502, 503, 504])
async def test_api_busy_statuses_are_transient(
    api: FakeApi, client: HttpClient, status: int
) -> None:
    api.responses["/restart/w1"] = (status, "try\nlater")
    restart = ApiRestart(client, api.base + "/restart/{id}", token=TOKEN)
    with pytest.raises(TransientRecoveryError) as info:
        await restart.recover(Target("w1", None))
    assert str(info.value) == f"HTTP {status} from POST {api.base}/restart/w1: try later"
    _assert_no_token(info.value)


@pytest.mark.parametrize("status", [400, 401, 404, 409, 500, 301])
async def test_api_other_statuses_are_permanent_with_a_short_body(
    api: FakeApi, client: HttpClient, status: int
) -> None:
    api.responses["/restart/w1"] = (status, "E" * 150 + "\n" + "F" * 1000)
    restart = ApiRestart(client, api.base + "/restart/{id}", token=TOKEN)
    with pytest.raises(PermanentRecoveryError) as info:
        await restart.recover(Target("w1", None))
    prefix = f"HTTP {status} from POST {api.base}/restart/w1: "
    assert str(info.value) == prefix + "E" * 150 + " " + "F" * 49
    _assert_no_token(info.value)


async def test_api_error_masks_a_token_the_server_echoes(api: FakeApi, client: HttpClient) -> None:
    api.responses["/restart/w1"] = (403, ECHO_AUTH)
    restart = ApiRestart(client, api.base + "/restart/{id}", token=TOKEN)
    with pytest.raises(PermanentRecoveryError) as info:
        await restart.recover(Target("w1", None))
    assert str(info.value).endswith(": Bearer ***")
    _assert_no_token(info.value)


async def test_api_connection_refused_is_transient(refused_url: str, client: HttpClient) -> None:
    restart = ApiRestart(client, refused_url, token=TOKEN)
    with pytest.raises(TransientRecoveryError) as info:
        await restart.recover(Target("w1", None))
    assert str(info.value).endswith(" failed: ConnectError: Connection refused")
    _assert_no_token(info.value)


async def test_api_connection_reset_is_transient(api: FakeApi, client: HttpClient) -> None:
    restart = ApiRestart(client, api.base + "/reset/{id}", token=TOKEN)
    with pytest.raises(TransientRecoveryError, match=r"HTTP POST .*/reset/w1 failed: ") as info:
        await restart.recover(Target("w1", None))
    _assert_no_token(info.value)


async def test_api_timeout_is_transient_and_bounded(api: FakeApi, client: HttpClient) -> None:
    restart = ApiRestart(client, api.base + "/slow/{id}", token=TOKEN, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(TransientRecoveryError) as info:
        await restart.recover(Target("w1", None))
    assert time.monotonic() - started < 2
    assert str(info.value).startswith(f"HTTP POST {api.base}/slow/w1 timed out after 0.2s (")
    _assert_no_token(info.value)


async def test_api_unsupported_scheme_is_permanent(client: HttpClient) -> None:
    restart = ApiRestart(client, "ftp://127.0.0.1/restart/{id}", token=TOKEN)
    with pytest.raises(PermanentRecoveryError, match="bad url: UnsupportedProtocol") as info:
        await restart.recover(Target("w1", None))
    _assert_no_token(info.value)


async def test_api_password_in_url_is_masked(api: FakeApi, client: HttpClient) -> None:
    url = api.base.replace("http://", "http://ops:hunter2@") + "/restart/{id}"
    result = await ApiRestart(client, url).recover(Target("w1", None))
    assert result.detail["url"] == api.base.replace("http://", "http://ops:***@") + "/restart/w1"
    # The credentials went as basic auth, on every client.
    assert api.requests[0].authorization == "Basic " + base64.b64encode(b"ops:hunter2").decode()


async def test_api_credentials_in_the_url_win_over_the_token_as_with_httpx(
    api: FakeApi, client: HttpClient
) -> None:
    url = api.base.replace("http://", "http://ops:hunter2@") + "/restart/{id}"
    await ApiRestart(client, url, token=TOKEN).recover(Target("w1", None))
    basic = "Basic " + base64.b64encode(b"ops:hunter2").decode()
    assert api.requests[0].authorizations == [basic]  # one header, never both


async def test_api_request_is_framed_as_httpx_frames_it(api: FakeApi, client: HttpClient) -> None:
    await ApiRestart(client, api.base + "/restart/{id}").recover(Target("w1", None))
    await ApiRestart(client, api.base + "/restart/{id}", method="GET").recover(Target("w2", None))
    post, get = (seen.headers for seen in api.requests)
    assert post["Host"] == get["Host"] == api.base.removeprefix("http://")
    assert post["Content-Length"] == "0"  # an empty body, said: some servers want it
    assert "Content-Length" not in get
    assert post["User-Agent"].startswith("python-httpx/")


async def test_api_any_url_goes_out_as_httpx_would_send_it(
    api: FakeApi, client: HttpClient
) -> None:
    """A URL the direct client cannot send as it is (here a non-ASCII path and a fragment)
    is parsed by httpx in full: the same request on every client."""
    result = await ApiRestart(client, api.base + "/réstart/{id}?x=1#top").recover(
        Target("w 1", None)
    )
    assert [seen.path for seen in api.requests] == ["/r%C3%A9start/w%201?x=1"]
    assert result.detail["url"] == api.base + "/r%C3%A9start/w%201?x=1#top"


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"Content-Type": "text/plain; charset=latin-1"}, "en maintenance: café".encode("latin-1")),
        ({"Content-Encoding": "gzip"}, gzip.compress(b"en maintenance: caf\xc3\xa9")),
        ({"Content-Encoding": "deflate"}, zlib.compress(b"en maintenance: caf\xc3\xa9")),
    ],
    ids=["latin-1", "gzip", "deflate"],
)
async def test_api_error_quotes_the_body_decoded(
    api: FakeApi, client: HttpClient, headers: dict[str, str], body: bytes
) -> None:
    """The body an error quotes is read as its headers say, even when the server
    compressed it though asked for it plain."""
    api.raw["/restart/w1"] = (503, headers, body)
    with pytest.raises(TransientRecoveryError, match=r"HTTP 503 .*: en maintenance: café$"):
        await ApiRestart(client, api.base + "/restart/{id}").recover(Target("w1", None))


async def test_api_error_body_is_unpacked_only_as_far_as_a_message_quotes(
    api: FakeApi,
) -> None:
    """A compressed error body that unpacks to 100 MB is not unpacked in full."""
    bomb = gzip.compress(b"busy " + b" " * 100_000_000)
    api.raw["/restart/w1"] = (503, {"Content-Encoding": "gzip"}, bomb)
    async with DirectClient(AsyncioTransport(api_tls("http://"))) as client:
        answer = await client.call("POST", api.base + "/restart/w1", headers={}, timeout=5)
    assert answer.text.startswith("busy ")
    assert len(answer.text) <= 64 * 1024


async def test_api_restart_is_a_recovery_keyed_by_instance(client: HttpClient) -> None:
    restart: Recovery = ApiRestart(client, "http://x/{id}", timeout=3)
    assert restart.action is Action.API_RESTART
    assert restart.timeout == 3
    assert restart.key(Target("w1", "shared")) == "w1"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url_template": "http://x/{instance}"}, r"unknown placeholder\(s\) \{instance\}"),
        ({"url_template": "http://x/{id}", "method": "PO ST"}, "HTTP method"),
        ({"url_template": "http://x/{id}", "timeout": 0}, "positive"),
    ],
)
async def test_api_restart_rejects_bad_configuration(
    client: HttpClient, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ApiRestart(client, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("token", ["two words", "tok\r\nX-Evil: 1", "caf\u00e9"])
async def test_api_restart_rejects_a_token_that_cannot_be_a_header(
    client: HttpClient, token: str
) -> None:
    with pytest.raises(ValueError, match="visible ASCII") as info:
        ApiRestart(client, "http://x/{id}", token=token)
    assert token not in str(info.value)


# ------------------------------------------------------------------------- DbFlag


class FakeInstances:
    """Just enough of an InstanceStore: a set of known ids and the flags set."""

    def __init__(self, known: set[str], error: Exception | None = None) -> None:
        self.known = known
        self.flagged: list[str] = []
        self.error = error

    async def scan(self, known: Mapping[str, Finding] | None = None) -> Scan:
        return Scan(now=await self.now(), findings={})

    async def set_force_reconnect(self, instance_id: str) -> bool:
        if self.error is not None:
            raise self.error
        if instance_id not in self.known:
            return False
        self.flagged.append(instance_id)
        return True

    async def exists(self, instance_id: str) -> bool:
        return instance_id in self.known

    async def now(self) -> datetime:
        return datetime(2024, 1, 1, tzinfo=UTC)


async def test_db_flag_sets_the_flag() -> None:
    store = FakeInstances({"w1"})
    flag: Recovery = DbFlag(store, timeout=2)
    result = await flag.recover(Target("w1", "proc"))
    assert result.detail == {"flag": "force_reconnect"}
    assert store.flagged == ["w1"]
    assert (flag.action, flag.timeout, flag.key(Target("w1", "proc"))) == (Action.DB_FLAG, 2, "w1")


async def test_db_flag_on_unknown_instance_is_permanent() -> None:
    with pytest.raises(PermanentRecoveryError, match="instance 'gone' is not in the instances"):
        await DbFlag(FakeInstances({"w1"})).recover(Target("gone", None))


async def test_db_flag_lets_store_errors_through_unchanged() -> None:
    error = StoreUnavailable("database is locked")
    with pytest.raises(StoreUnavailable) as info:
        await DbFlag(FakeInstances({"w1"}, error)).recover(Target("w1", None))
    assert info.value is error


# ----------------------------------------------------------------- CommandRestart

PY = sys.executable
PRINT_ARGS = "import json, sys; print(json.dumps(sys.argv[1:]))"
# Starts a helper that shares its pipes and records both pids...
START_HELPER = """
import os, subprocess, sys, time
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write("%d %d" % (os.getpid(), helper.pid))  # no braces: they mark placeholders
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
"""
HANG = START_HELPER + "time.sleep(60)\n"  # ...then hangs
DETACH = START_HELPER  # ...then exits, leaving the helper on its pipes, like `app &` in a script


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _pids_from(path: Path) -> tuple[int, int]:
    async with asyncio.timeout(5):
        while not path.exists():
            await asyncio.sleep(0.01)  # polls a condition, with a deadline
    child, helper = path.read_text().split()
    return int(child), int(helper)


async def _assert_gone(child: int, helper: int) -> None:
    # Our own child must be reaped, not a zombie: kill(pid, 0) fails only then.
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    # The helper was re-parented, so init reaps it; it must be dead. Its pipes close a moment
    # before it turns into a zombie, hence the bounded wait.
    async with asyncio.timeout(2):
        while _alive(helper):
            await asyncio.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False


async def test_command_runs_argv_with_substitutions() -> None:
    restart = CommandRestart([PY, "-c", PRINT_ARGS, "{process}", "--id={id}"], "worker-{id}")
    result = await restart.recover(Target("app:7@eu.1", None))
    argv = [PY, "-c", PRINT_ARGS, "worker-app:7@eu.1", "--id=app:7@eu.1"]
    assert result.detail == {
        "argv": argv,
        "exit": 0,
        "process": "worker-app:7@eu.1",
        "stdout": json.dumps(argv[3:]),
    }


async def test_command_never_uses_a_shell() -> None:
    literal = "$HOME;`id` * | echo >x && $(id)"
    restart = CommandRestart([PY, "-c", PRINT_ARGS, literal, "{id}"], "p")
    result = await restart.recover(Target("w1", None))
    assert json.loads(result.detail["stdout"]) == [literal, "w1"]


async def test_command_keeps_the_last_200_chars_of_stdout() -> None:
    restart = CommandRestart([PY, "-c", "print('a' * 500 + 'END')"], "p")
    result = await restart.recover(Target("w1", None))
    assert result.detail["stdout"] == "a" * 197 + "END"


async def test_command_key_is_the_resolved_process() -> None:
    restart: Recovery = CommandRestart(["restart", "{process}"], "worker-{id}", timeout=4)
    assert restart.key(Target("7", None)) == "worker-7"
    assert restart.key(Target("7", "pool")) == "pool"
    assert (restart.action, restart.timeout) == (Action.PROCESS_RESTART, 4)


async def test_command_nonzero_exit_is_permanent_with_stderr_tail() -> None:
    script = "import sys; sys.stderr.write('x' * 300 + '\\nno such\\nprocess'); sys.exit(3)"
    restart = CommandRestart([PY, "-c", script], "p")
    with pytest.raises(PermanentRecoveryError) as info:
        await restart.recover(Target("w1", None))
    tail = ("x" * 300 + " no such process")[-200:]  # newlines become spaces
    assert str(info.value) == f"command {PY} exited with 3: {tail}"


async def test_command_exit_75_is_transient() -> None:
    restart = CommandRestart([PY, "-c", "import sys; sys.exit(75)"], "p")
    with pytest.raises(TransientRecoveryError, match=r"exited with 75: \(no output\)$"):
        await restart.recover(Target("w1", None))


async def test_command_killed_by_a_signal_names_it() -> None:
    restart = CommandRestart([PY, "-c", "import os, signal; os.kill(os.getpid(), 15)"], "p")
    with pytest.raises(PermanentRecoveryError, match="was killed by SIGTERM"):
        await restart.recover(Target("w1", None))


async def test_command_timeout_kills_and_reaps_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    restart = CommandRestart([PY, "-c", HANG, str(pidfile)], "p", timeout=0.5)
    fds = _open_fds()
    started = time.monotonic()
    with pytest.raises(TransientRecoveryError) as info:
        await restart.recover(Target("w1", None))
    assert time.monotonic() - started < 3
    assert str(info.value) == f"command {PY} timed out after 0.5s and was killed"
    await _assert_gone(*await _pids_from(pidfile))
    assert _open_fds() == fds  # both pipes closed


async def test_command_cancelled_by_the_caller_still_cleans_up(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    restart = CommandRestart([PY, "-c", HANG, str(pidfile)], "p", timeout=30)
    fds = _open_fds()
    task = asyncio.create_task(restart.recover(Target("w1", None)))
    pids = await _pids_from(pidfile)
    task.cancel()  # what the engine's asyncio.timeout does
    with pytest.raises(asyncio.CancelledError):
        await task
    await _assert_gone(*pids)
    assert _open_fds() == fds


async def test_command_whose_background_child_holds_the_pipes_is_reported(
    tmp_path: Path,
) -> None:
    pidfile = tmp_path / "pids"
    restart = CommandRestart([PY, "-c", DETACH, str(pidfile)], "p", timeout=0.5)
    fds = _open_fds()
    with pytest.raises(PermanentRecoveryError) as info:
        await restart.recover(Target("w1", None))
    assert str(info.value).startswith(f"command {PY} exited with 0 but a process it started")
    assert "redirect that process's output" in str(info.value)
    await _assert_gone(*await _pids_from(pidfile))
    assert _open_fds() == fds


async def test_command_missing_executable_is_permanent(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-ctl")
    restart = CommandRestart([missing, "restart", "{process}"], "p")
    with pytest.raises(PermanentRecoveryError) as info:
        await restart.recover(Target("w1", None))
    assert str(info.value) == (
        f"cannot run {missing}: No such file or directory; check [process] command"
    )


async def test_command_not_executable_is_permanent(tmp_path: Path) -> None:
    script = tmp_path / "ctl"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(stat.S_IRUSR | stat.S_IWUSR)
    restart = CommandRestart([str(script)], "p")
    with pytest.raises(PermanentRecoveryError, match="Permission denied; check"):
        await restart.recover(Target("w1", None))


@pytest.mark.parametrize(
    "target",
    [
        Target("a b", None),
        Target("../x", None),
        Target("$(rm)", None),
        Target("-rf", None),
        Target("w1\n", None),
        Target("w1", "a b"),
        Target("w1", "--kill-all"),
    ],
    ids=repr,
)
async def test_command_refuses_unsafe_names_before_running(tmp_path: Path, target: Target) -> None:
    marker = tmp_path / "ran"
    script = "import sys; open(sys.argv[1], 'w').close()"
    restart = CommandRestart([PY, "-c", script, str(marker), "{process}", "{id}"], "w-{id}")
    with pytest.raises(PermanentRecoveryError, match=r"unsafe (instance id|process name) ") as info:
        await restart.recover(Target(target.instance_id, target.process))
    bad = target.instance_id if "instance id" in str(info.value) else target.process
    assert repr(bad) in str(info.value)
    with pytest.raises(RecoveryError):
        restart.key(target)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("argv", "default", "message"),
    [
        (["ctl", "{cmd}"], "p", r"\{cmd\}"),
        (["ctl", "{process}"], "{process}", r"default process .*\{process\}"),
        (["ctl", "{0}"], "p", r"\{0\}"),
        ([], "p", "non-empty"),
        ("ctl restart", "p", "non-empty list"),
    ],
)
async def test_command_rejects_bad_templates(argv: list[str], default: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CommandRestart(argv, default)


# ----------------------------------------------------------------- CommandRestart: pid_command

# Prints the content of the file named by its argument: the PID a process manager would.
READ_PID = "import sys; print(open(sys.argv[1]).read())"
# Writes its second argument into the file named by its first: a restart to that PID.
WRITE_PID = "import sys; open(sys.argv[1], 'w').write(sys.argv[2])"
SLEEP = [PY, "-c", "import time; time.sleep(300)"]


@pytest.fixture
def sleepers() -> Iterator[list[int]]:
    """Two real processes standing in for the old and the new life of a hosted process."""
    procs = [subprocess.Popen(SLEEP, stdin=subprocess.DEVNULL) for _ in range(2)]
    try:
        yield [proc.pid for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=5)


def _generation_of(pid: int) -> Generation:
    return Generation(pid, round(psutil.Process(pid).create_time(), 2))


def _pid_backend(tmp_path: Path, new_pid: int | str, **kwargs: Any) -> CommandRestart:
    """A restart writing `new_pid` into `<process>.pid`, whose pid_command reads it."""
    pidfile = str(tmp_path / "{process}.pid")
    return CommandRestart(
        [PY, "-c", WRITE_PID, pidfile, str(new_pid)],
        "worker-{id}",
        pid_command=[PY, "-c", READ_PID, pidfile],
        **kwargs,
    )


async def test_pid_command_puts_old_and_new_pid_into_the_detail(
    tmp_path: Path, sleepers: list[int]
) -> None:
    old, new = sleepers
    (tmp_path / "worker-7.pid").write_text(f"{old}\n")
    restart = _pid_backend(tmp_path, new)

    result = await restart.recover(Target("7", None))

    detail = dict(result.detail)
    assert detail.pop("old_state") in (psutil.STATUS_SLEEPING, psutil.STATUS_RUNNING)
    assert detail.pop("old_rss") > 0
    assert detail.pop("argv")[-1] == str(new)
    assert detail == {
        "exit": 0,
        "process": "worker-7",
        "stdout": "",
        "old_pid": old,
        "new_pid": new,
    }
    assert result.generation == _generation_of(new)


async def test_pid_command_tells_the_generation_before_and_after_a_restart(
    tmp_path: Path, sleepers: list[int]
) -> None:
    old, new = sleepers
    (tmp_path / "pool.pid").write_text(str(old))
    restart = _pid_backend(tmp_path, new)
    source: GenerationSource = restart
    before = await source.generation("pool")
    assert before == _generation_of(old)

    result = await restart.recover(Target("7", "pool"))

    after = await source.generation("pool")
    assert after == result.generation == _generation_of(new)
    assert after is not None
    assert not after.same_as(before)
    assert restart.pid_argv_for("pool", "7") == [PY, "-c", READ_PID, str(tmp_path / "pool.pid")]


@pytest.mark.parametrize("output", ["0", "", "\n\n", "  0  \n"])
async def test_pid_0_or_no_output_is_not_running(
    tmp_path: Path, sleepers: list[int], output: str
) -> None:
    (tmp_path / "app.pid").write_text(output)
    restart = _pid_backend(tmp_path, sleepers[1])
    assert await restart.generation("app") is None
    result = await restart.recover(Target("7", "app"))
    assert result.detail["old_pid"] is None
    assert "old_state" not in result.detail
    assert result.detail["new_pid"] == sleepers[1]


async def test_the_last_non_empty_line_is_the_pid(tmp_path: Path, sleepers: list[int]) -> None:
    (tmp_path / "app.pid").write_text(f"[PM2] reading\n 12 \n{sleepers[0]}\n\n")
    assert await _pid_backend(tmp_path, 1).generation("app") == _generation_of(sleepers[0])


async def test_a_pid_that_names_no_visible_process_has_no_start(
    tmp_path: Path, sleepers: list[int]
) -> None:
    gone = subprocess.Popen(SLEEP, stdin=subprocess.DEVNULL)
    gone.kill()
    gone.wait(timeout=5)  # reaped: its PID names no process now
    (tmp_path / "app.pid").write_text(str(gone.pid))
    result = await _pid_backend(tmp_path, gone.pid).generation("app")
    assert result == Generation(gone.pid, None)


async def test_a_failing_pid_command_is_one_line_naming_it_and_stops_the_restart(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "restarted"
    script = "import sys; sys.stderr.write('pm2 daemon\\nnot running\\n'); sys.exit(1)"
    restart = CommandRestart(
        [PY, "-c", WRITE_PID, str(marker), "1"], "p", pid_command=[PY, "-c", script]
    )
    expected = f"[process] pid_command {PY} exited with 1: pm2 daemon not running"
    with pytest.raises(PermanentRecoveryError) as info:
        await restart.generation("p")
    assert str(info.value) == expected
    with pytest.raises(PermanentRecoveryError) as info:
        await restart.recover(Target("w1", None))
    assert str(info.value) == expected
    assert not marker.exists()  # nothing was restarted without knowing the old PID


async def test_a_pid_command_failing_after_the_restart_does_not_fail_it(tmp_path: Path) -> None:
    pidfile = tmp_path / "app.pid"
    pidfile.write_text("0")
    # The "restart" removes the file the pid_command reads, which then fails.
    remove = "import os, sys; os.remove(sys.argv[1])"
    restart = CommandRestart(
        [PY, "-c", remove, str(pidfile)], "p", pid_command=[PY, "-c", READ_PID, str(pidfile)]
    )
    result = await restart.recover(Target("w1", "app"))
    assert result.detail["old_pid"] is None
    assert result.detail["new_pid"] is None
    assert result.detail["pid_error"].startswith(f"[process] pid_command {PY} exited with 1: ")
    assert "FileNotFoundError" in result.detail["pid_error"]
    assert result.generation is None


@pytest.mark.parametrize("output", ["pid: 42", "-5", "12 13", "4.2"])
async def test_pid_command_output_that_is_no_pid_is_refused(tmp_path: Path, output: str) -> None:
    (tmp_path / "app.pid").write_text(output)
    with pytest.raises(PermanentRecoveryError) as info:
        await _pid_backend(tmp_path, 1).generation("app")
    assert str(info.value) == (
        f"[process] pid_command {PY} printed {output!r} where a PID was expected; it must "
        "print the process's PID on its last line (0 or nothing when not running)"
    )


async def test_a_hanging_pid_command_is_killed_reaped_and_transient(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    restart = CommandRestart(["true"], "p", timeout=0.5, pid_command=[PY, "-c", HANG, str(pidfile)])
    fds = _open_fds()
    with pytest.raises(TransientRecoveryError) as info:
        await restart.generation("p")
    assert str(info.value) == f"[process] pid_command {PY} timed out after 0.5s and was killed"
    await _assert_gone(*await _pids_from(pidfile))
    assert _open_fds() == fds


async def test_a_missing_pid_command_names_its_key(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-pm2")
    restart = CommandRestart(["true"], "p", pid_command=[missing, "pid", "{process}"])
    with pytest.raises(PermanentRecoveryError) as info:
        await restart.generation("p")
    assert str(info.value) == (
        f"cannot run {missing}: No such file or directory; check [process] pid_command"
    )


async def test_pid_command_refuses_unsafe_names_before_running(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    script = "import sys; open(sys.argv[1], 'w').close()"
    restart = CommandRestart(["true"], "p", pid_command=[PY, "-c", script, str(marker)])
    with pytest.raises(PermanentRecoveryError, match="unsafe process name"):
        await restart.generation("--all")
    assert not marker.exists()


async def test_without_pid_command_there_is_no_generation() -> None:
    restart = CommandRestart(["true"], "p")
    assert await restart.generation("p") is None
    assert restart.pid_argv_for("p", "i") is None
    result = await restart.recover(Target("w1", None))
    assert result.generation is None
    assert "old_pid" not in result.detail


@pytest.mark.parametrize(
    ("pid_command", "message"),
    [
        (["pm2", "pid", "{name}"], r"^pid_command argument '\{name\}' has unknown placeholder"),
        (["pm2", "{ID}"], r"\{ID\}"),
        ([], "^pid_command argv must be a non-empty list"),
        ("pm2 pid app", "^pid_command argv must be a non-empty list"),
    ],
)
def test_pid_command_rejects_bad_templates(pid_command: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CommandRestart(["pm2", "restart", "{process}"], "p", pid_command=pid_command)
