"""The supervisord backend against a real supervisord (started by `tests.supervisord`),
real child processes, a real unix socket and a real inet server with basic auth.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest

from tests.supervisord import Supervisord, python, sleeper, supervisord
from tests.waiting import wait_for
from watchdog.actions.supervisor import SupervisorRestart
from watchdog.core.errors import PermanentRecoveryError, TransientRecoveryError
from watchdog.core.model import Action, Generation, Target
from watchdog.core.ports import GenerationSource, ProcessLocator, Recovery

USER, SECRET = "watchdog", "s3cr3t@sv/pass"  # asserted never to leak, nor its encoded form
ENCODED = quote(SECRET, safe="")
PLAIN = "plain-s3cr3t"
IGNORE_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"


@pytest.fixture(scope="module")
def sv() -> Iterator[Supervisord]:
    """One supervisord for the module; each test works on programs of its own."""
    programs = {
        "plain": sleeper(),
        "frozen": sleeper(stopwaitsecs=30),
        "stubborn": python(IGNORE_TERM, stopwaitsecs=30),
        "idle": sleeper(autostart=False),
        "crashing": python(
            "raise SystemExit(3)", autostart=False, startsecs=10, extra={"startretries": "0"}
        ),
        "located": sleeper(),
        "viahttp": sleeper(),
        "grouped": sleeper(),
        "lives": sleeper(),
        "dormant": sleeper(autostart=False),
    }
    with supervisord(programs, groups={"pool": ["grouped"]}, http_auth=(USER, SECRET)) as server:
        yield server


def restart(sv: Supervisord, **options: float) -> SupervisorRestart:
    return SupervisorRestart(sv.url, "app-{id}", **options)


def wait_frozen(pid: int) -> None:
    wait_for(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED, 5, "SIGSTOP")


def full_text(exc: BaseException) -> str:
    """The message, the causes and their tracebacks: everything a log could show."""
    return "".join(traceback.format_exception(exc))


# ----------------------------------------------------------------------- restarts


async def test_restart_gives_a_new_running_pid_and_evidence(sv: Supervisord) -> None:
    old_pid = sv.pid("plain")
    backend = restart(sv)

    result = await backend.recover(Target("i-1", "plain"))

    new_pid = sv.pid("plain")
    assert new_pid != old_pid
    assert not psutil.pid_exists(old_pid)
    detail = result.detail
    assert detail["old_pid"] == old_pid
    assert detail["new_pid"] == new_pid
    assert detail["old_state"] in ("sleeping", "running")
    assert detail["old_rss"] > 0
    assert detail["program"] == "plain"
    assert detail["backend"] == "supervisor"
    assert detail["old_program_state"] == "RUNNING"
    assert detail["new_started"] == sv.info("plain")["start"]
    assert detail["new_started"] >= detail["old_started"] > 0
    assert result.generation == Generation(new_pid, detail["new_started"])


async def test_a_sigstopped_program_is_restarted_without_waiting_out_stopwaitsecs(
    sv: Supervisord,
) -> None:
    old_pid = sv.pid("frozen")  # stopwaitsecs=30
    os.kill(old_pid, signal.SIGSTOP)
    wait_frozen(old_pid)

    started = time.monotonic()
    result = await restart(sv).recover(Target("i-2", "frozen"))
    elapsed = time.monotonic() - started

    assert elapsed < 10, f"took {elapsed:.1f}s"  # supervisord alone would wait 30 s
    assert result.detail["old_state"] == psutil.STATUS_STOPPED
    assert result.detail["new_pid"] == sv.pid("frozen") != old_pid


async def test_a_program_ignoring_sigterm_is_killed_after_stop_wait(sv: Supervisord) -> None:
    old_pid = sv.pid("stubborn")  # ignores SIGTERM, stopwaitsecs=30
    wait_for(lambda: ignores_sigterm(old_pid), 5, "its SIGTERM handler")

    started = time.monotonic()
    result = await restart(sv, stop_wait=1.0).recover(Target("i-3", "stubborn"))
    elapsed = time.monotonic() - started

    assert 1.0 <= elapsed < 10, f"took {elapsed:.1f}s"
    assert result.detail["new_pid"] == sv.pid("stubborn") != old_pid


async def test_a_program_that_is_not_running_gets_started(sv: Supervisord) -> None:
    assert sv.info("idle")["statename"] == "STOPPED"

    result = await restart(sv).recover(Target("i-4", "idle"))

    assert result.detail["old_pid"] is None
    assert result.detail["old_started"] is None
    assert result.detail["new_pid"] == sv.pid("idle")
    assert result.detail["old_program_state"] == "STOPPED"


async def test_a_group_member_is_restarted_by_its_full_name(sv: Supervisord) -> None:
    old_pid = sv.pid("pool:grouped")
    backend = SupervisorRestart(sv.url, "pool:{process}")

    result = await backend.recover(Target("i-5", "grouped"))

    assert result.detail["program"] == "pool:grouped"
    assert result.detail["new_pid"] == sv.pid("pool:grouped") != old_pid


async def test_a_program_dying_at_start_is_a_transient_error(sv: Supervisord) -> None:
    # It exits long before its startsecs (10), which supervisord reports as a fault.
    with pytest.raises(TransientRecoveryError, match=r"SPAWN_ERROR|ABNORMAL_TERMINATION") as caught:
        await restart(sv).recover(Target("i-6", "crashing"))
    assert str(caught.value).startswith("supervisord startProcess 'crashing' failed: ")


async def test_an_unknown_program_is_a_permanent_error(sv: Supervisord) -> None:
    with pytest.raises(PermanentRecoveryError) as caught:
        await restart(sv).recover(Target("i-7", None))  # app-i-7
    assert str(caught.value) == (
        "supervisord has no program 'app-i-7'; check [process] program or the process column"
    )


# ----------------------------------------------------------------------- the server


async def test_a_missing_socket_is_a_quick_transient_error() -> None:
    url = "unix:///tmp/wd-sv-no-such-dir/s.sock"
    started = time.monotonic()
    with pytest.raises(TransientRecoveryError) as caught:
        await SupervisorRestart(url, "app").recover(Target("i-8", None))
    assert time.monotonic() - started < 2
    assert str(caught.value).startswith(f"supervisord at {url} unreachable: No such file")


async def test_a_hung_supervisord_times_out_on_the_socket() -> None:
    with hung_server() as (url, _server):
        backend = SupervisorRestart(url, "app", timeout=1.0, stop_wait=0.5)
        started = time.monotonic()
        with pytest.raises(TransientRecoveryError, match="no answer within 1s"):
            await backend.recover(Target("i-9", None))
        assert time.monotonic() - started < 3


async def test_cancelling_a_call_releases_its_connection() -> None:
    with hung_server() as (url, server):
        server.settimeout(5)
        backend = SupervisorRestart(url, "app", timeout=30.0)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):  # what the engine does
                await backend.recover(Target("i-10", None))
        # The worker thread's socket was shut down: the server sees the request, then EOF,
        # long before the 30 s socket timeout.
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            received = b""
            while chunk := await asyncio.to_thread(conn.recv, 65536):
                received += chunk
        assert b"getProcessInfo" in received


async def test_a_supervisord_that_went_down_fails_and_the_next_call_works() -> None:
    with supervisord({"app": sleeper()}) as server:
        backend = SupervisorRestart(server.url, "app")
        server.stop()
        with pytest.raises(TransientRecoveryError, match="unreachable"):
            await backend.recover(Target("i-11", None))
        assert await backend.locate("app") is None

        server.start()
        result = await backend.recover(Target("i-11", None))
        assert result.detail["new_pid"] == server.pid("app")


async def test_http_with_credentials_works_and_never_shows_them(sv: Supervisord) -> None:
    backend = SupervisorRestart(sv.http_url, "app-{id}")
    assert ENCODED in sv.http_url
    assert backend.server == f"http://127.0.0.1:{sv.port}"

    result = await backend.recover(Target("i-12", "viahttp"))
    assert result.detail["new_pid"] == sv.pid("viahttp")
    assert SECRET not in repr(result.detail)
    assert ENCODED not in repr(result.detail)

    with pytest.raises(TransientRecoveryError) as unknown_port:
        await SupervisorRestart(f"http://{USER}:{ENCODED}@127.0.0.1:1", "x").recover(
            Target("i-12", None)
        )
    assert "supervisord at http://127.0.0.1:1 unreachable" in str(unknown_port.value)
    assert ENCODED not in full_text(unknown_port.value)


async def test_wrong_credentials_are_a_permanent_error_without_the_password(
    sv: Supervisord,
) -> None:
    url = f"http://{USER}:wrong-pass@127.0.0.1:{sv.port}"
    with pytest.raises(PermanentRecoveryError, match="401 Unauthorized") as caught:
        await SupervisorRestart(url, "viahttp").recover(Target("i-13", None))
    assert "wrong-pass" not in full_text(caught.value)


def test_bad_urls_are_refused_without_showing_credentials() -> None:
    with pytest.raises(ValueError, match="must start with unix:// or http://") as caught:
        SupervisorRestart(f"https://{USER}:{PLAIN}@example.com:9001", "app")
    assert PLAIN not in str(caught.value)
    with pytest.raises(ValueError, match="invalid port") as caught:
        SupervisorRestart(f"http://{USER}:{PLAIN}@127.0.0.1:port", "app")
    assert PLAIN not in str(caught.value)
    for url in (f"http://{USER}:{PLAIN}/x@127.0.0.1:9001", f"http://{USER}:12#{PLAIN}@h:9001"):
        with pytest.raises(ValueError, match="percent-encode") as caught:
            SupervisorRestart(url, "app")
        assert PLAIN not in str(caught.value)
        assert "127.0.0.1:9001" in str(caught.value) or "h:9001" in str(caught.value)
    encoded = SupervisorRestart(f"http://{USER}:p%40ss%2Fword@127.0.0.1:9001", "app")
    assert encoded.server == "http://127.0.0.1:9001"
    with pytest.raises(ValueError, match="unknown placeholder"):
        SupervisorRestart("unix:///run/supervisor.sock", "app-{ID}")
    with pytest.raises(ValueError, match="stop_wait"):
        SupervisorRestart("unix:///run/supervisor.sock", "app", timeout=5, stop_wait=10)


# ----------------------------------------------------------------------- key and locate


def test_key_groups_targets_on_the_same_program() -> None:
    backend: Recovery = SupervisorRestart("unix:///run/supervisor.sock", "app-{id}")
    assert backend.action is Action.PROCESS_RESTART
    assert backend.key(Target("a", "worker")) == backend.key(Target("b", "worker")) == "worker"
    assert backend.key(Target("c", None)) == "app-c"
    assert backend.key(Target("c", None)) != backend.key(Target("d", None))
    with pytest.raises(PermanentRecoveryError, match="unsafe process name"):
        backend.key(Target("e", "x; rm -rf /"))

    grouped = SupervisorRestart("unix:///run/supervisor.sock", "pool:{process}")
    assert grouped.key(Target("a", "w1")) == grouped.key(Target("b", "w1")) == "pool:w1"
    with pytest.raises(PermanentRecoveryError, match="has no process"):
        grouped.key(Target("c", None))


async def test_locate_returns_the_running_pid(sv: Supervisord) -> None:
    locator: ProcessLocator = SupervisorRestart(sv.url, "app-{id}")
    assert await locator.locate("located") == sv.pid("located")
    assert await locator.locate("nope") is None
    assert await locator.locate("crashing") is None  # never started
    assert await locator.locate("bad name") is None
    grouped = SupervisorRestart(sv.url, "pool:{process}")
    name = grouped.key(Target("x", "grouped"))
    assert await grouped.locate(name) == sv.pid("pool:grouped")
    missing = SupervisorRestart("unix:///tmp/wd-sv-no-such-dir/s.sock", "app")
    assert await missing.locate("app") is None


# ----------------------------------------------------------------------- generations


def supervisorctl(sv: Supervisord, *args: str) -> str:
    """Run the real supervisorctl against this supervisord; its stdout."""
    argv = [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(sv.config), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def test_generation_is_the_pid_and_start_supervisorctl_sees(sv: Supervisord) -> None:
    source: GenerationSource = restart(sv)
    generation = await source.generation("lives")
    assert generation is not None
    assert generation.pid == int(supervisorctl(sv, "pid", "lives")) == sv.pid("lives")
    assert generation.started == sv.info("lives")["start"] > 0
    assert generation.same_as(await source.generation("lives"))  # asked again: the same life


async def test_a_restart_by_someone_else_is_a_new_generation(sv: Supervisord) -> None:
    backend = restart(sv)
    before = await backend.generation("lives")
    assert before is not None

    supervisorctl(sv, "restart", "lives")

    after = await backend.generation("lives")
    assert after is not None
    assert after.pid == sv.pid("lives") != before.pid
    assert not after.same_as(before)
    assert after.started is not None
    assert before.started is not None
    assert after.started >= before.started


async def test_recover_returns_the_generation_that_follows(sv: Supervisord) -> None:
    backend = restart(sv)
    before = await backend.generation("lives")
    assert before is not None

    result = await backend.recover(Target("i-14", "lives"))

    assert result.generation is not None
    assert result.generation == await backend.generation("lives")
    assert not result.generation.same_as(before)
    assert result.detail["old_started"] == before.started


async def test_a_program_not_running_has_no_generation(sv: Supervisord) -> None:
    backend = restart(sv)
    assert await backend.generation("dormant") is None  # never started
    assert await backend.generation("crashing") is None


async def test_generation_raises_when_supervisord_cannot_tell(sv: Supervisord) -> None:
    with pytest.raises(PermanentRecoveryError, match="supervisord has no program 'nope'"):
        await restart(sv).generation("nope")
    with pytest.raises(PermanentRecoveryError, match="unsafe supervisor program"):
        await restart(sv).generation("bad name")
    missing = SupervisorRestart("unix:///tmp/wd-sv-no-such-dir/s.sock", "app")
    with pytest.raises(TransientRecoveryError, match="unreachable"):
        await missing.generation("app")


async def test_generation_of_a_hung_supervisord_is_bounded() -> None:
    with hung_server() as (url, _server):
        backend = SupervisorRestart(url, "app", timeout=30.0)
        started = time.monotonic()
        with pytest.raises(TransientRecoveryError, match="no answer within 5s"):
            await backend.generation("app")
        assert time.monotonic() - started < 8


# ----------------------------------------------------------------------- helpers


@contextlib.contextmanager
def hung_server() -> Iterator[tuple[str, socket.socket]]:
    """A unix socket that takes connections (into its backlog) and never answers."""
    rundir = Path(tempfile.mkdtemp(prefix="wd-sv-", dir="/tmp"))
    path = rundir / "hung.sock"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(str(path))
            server.listen(8)
            yield f"unix://{path}", server
    finally:
        path.unlink(missing_ok=True)
        rundir.rmdir()


def ignores_sigterm(pid: int) -> bool:
    """True once the process has installed its SIG_IGN for SIGTERM."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:"))
    return bool(int(mask, 16) & (1 << (signal.SIGTERM - 1)))
