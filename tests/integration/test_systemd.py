"""SystemdRestart against a FAKE `systemctl`.

systemd is not PID 1 on the machines these tests run on (containers, CI), so there is no
real service manager to restart units. Instead each test writes a small Python script named
`systemctl` into tmp_path. It keeps its state in a JSON file next to it: the units, each
with the PID of a REAL process the test started (so psutil evidence has something to read)
and the Unix second its main process started (printed as ExecMainStartTimestamp, in UTC,
unless the unit gives the raw text as `stamp`), a pool of spare processes that `restart`
hands out as new main PIDs (with a later start), and every argv it was called with. Each
unit has a mode that makes `restart` misbehave the way systemctl can: fail with an exit
code, hang, keep the same PID, leave no main process. Every process the tests start is
killed and reaped afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from watchdog.actions.systemd import SystemdRestart, parse_timestamp
from watchdog.core.errors import PermanentRecoveryError, RecoveryError, TransientRecoveryError
from watchdog.core.model import Action, Generation, Target
from watchdog.core.ports import GenerationSource, ProcessLocator, Recovery

PY = sys.executable
SLEEPER = [PY, "-c", "import time; time.sleep(300)"]

FAKE_SYSTEMCTL = r'''
"""A fake systemctl: `show` and `restart` over the JSON state file next to this script."""
import json, os, signal, subprocess, sys, time

STATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "systemctl.json")


def load():
    with open(STATE) as f:
        return json.load(f)


def save(state):
    with open(STATE + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(STATE + ".tmp", STATE)


state = load()
state["calls"].append(sys.argv)
save(state)
words = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
verb, unit = words[0], words[-1]
spec = state["units"].get(unit)
mode = spec["mode"] if spec else "unknown"

if mode == "show-hangs" or (mode == "hang" and verb == "restart"):
    # A helper shares our pipes, like a stuck polkit agent would; then we hang.
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with open(state["pidfile"] + ".tmp", "w") as f:
        f.write("%d %d" % (os.getpid(), helper.pid))
    os.replace(state["pidfile"] + ".tmp", state["pidfile"])
    time.sleep(60)
if mode == "show-fails":
    sys.stderr.write("Failed to connect to bus: No such file or directory\n")
    sys.exit(1)
if verb == "show":
    # Real systemctl prints LoadState=not-found and MainPID=0 for a unit it does not know,
    # an empty ExecMainStartTimestamp for one without a main process, and orders the
    # properties its own way, not as asked.
    pid = spec["pid"] if spec else 0
    stamp = ""
    if pid:
        stamp = time.strftime("%a %Y-%m-%d %H:%M:%S UTC", time.gmtime(spec["started"]))
    print("MainPID=%d" % pid)
    print("ExecMainStartTimestamp=" + (spec.get("stamp", stamp) if spec else ""))
    print("LoadState=" + (spec.get("load", "loaded") if spec else "not-found"))
    sys.exit(0)
if verb != "restart":
    sys.exit(1)
if mode == "unknown":
    sys.stderr.write("Failed to restart %s: Unit %s not found.\n" % (unit, unit))
    sys.exit(5)
if mode == "fail":
    sys.stderr.write(spec["stderr"])
    sys.exit(spec["exit"])
if mode in ("ok", "dies") and spec["pid"]:
    os.kill(spec["pid"], signal.SIGTERM)  # systemd stops the old main process
if mode == "ok":
    spec["pid"] = state["pool"].pop(0)
    spec["started"] = max(int(time.time()), spec["started"] + 1)
if mode == "dies":
    spec["pid"] = 0
save(state)  # mode "same-pid": exit 0, MainPID as before
'''


class FakeSystemctl:
    """The fake's script and state, and the real processes standing in for services."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "systemctl"
        self.state_path = directory / "systemctl.json"
        self.pidfile = directory / "hang.pids"
        self.path.write_text(f"#!{PY}\n{FAKE_SYSTEMCTL}")
        self.path.chmod(0o755)
        self._procs: list[subprocess.Popen[bytes]] = []
        self._save({"units": {}, "pool": [], "calls": [], "pidfile": str(self.pidfile)})

    def process(self) -> int:
        """Start a real process for a unit's main PID."""
        proc = subprocess.Popen(SLEEPER, stdin=subprocess.DEVNULL)
        self._procs.append(proc)
        return proc.pid

    def add_unit(self, name: str, mode: str = "ok", **spec: Any) -> int:
        """Add a unit running a fresh process (a spare one too, for `restart`); its PID.
        Its main process "started" a minute ago unless `spec` says when."""
        state = self.state()
        pid = self.process()
        state["units"][name] = {
            "pid": pid,
            "mode": mode,
            "started": int(time.time()) - 60,
            **spec,
        }
        if mode == "ok":
            state["pool"].append(self.process())
        self._save(state)
        return pid

    def main_pid(self, name: str) -> int:
        return int(self.state()["units"][name]["pid"])

    def started(self, name: str) -> int:
        return int(self.state()["units"][name]["started"])

    def calls(self) -> list[list[str]]:
        return list(self.state()["calls"])

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.state_path.read_text())
        return result

    def _save(self, state: dict[str, Any]) -> None:
        self.state_path.write_text(json.dumps(state))

    def close(self) -> None:
        for proc in self._procs:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeSystemctl]:
    systemctl = FakeSystemctl(tmp_path)
    try:
        yield systemctl
    finally:
        systemctl.close()


def _restart(fake: FakeSystemctl, unit: str = "app.service", **kwargs: Any) -> SystemdRestart:
    return SystemdRestart(unit, systemctl=str(fake.path), **kwargs)


def _show(fake: FakeSystemctl, unit: str) -> list[str]:
    properties = ["LoadState", "MainPID", "ExecMainStartTimestamp"]
    return [str(fake.path), "show", *[f"--property={p}" for p in properties], "--", unit]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False


async def _pids_from(path: Path) -> tuple[int, int]:
    async with asyncio.timeout(10):
        while not path.exists():
            await asyncio.sleep(0.01)  # polls a condition, with a deadline
    child, helper = path.read_text().split()
    return int(child), int(helper)


async def _assert_gone(child: int, helper: int) -> None:
    # The fake systemctl is our child: it must be reaped, not left a zombie.
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    # Its helper was in the same process group, so the kill reached it too.
    async with asyncio.timeout(2):
        while _alive(helper):
            await asyncio.sleep(0.01)


# ----------------------------------------------------------------- success


async def test_restart_reports_old_and_new_main_pid_with_evidence(fake: FakeSystemctl) -> None:
    old = fake.add_unit("app.service")
    result = await _restart(fake).recover(Target("w1", None))
    new = fake.main_pid("app.service")
    assert new != old
    detail = dict(result.detail)
    assert detail.pop("old_state") in (psutil.STATUS_SLEEPING, psutil.STATUS_RUNNING)
    assert detail.pop("old_rss") > 0
    assert detail == {"old_pid": old, "new_pid": new, "unit": "app.service", "backend": "systemd"}
    assert fake.calls() == [
        _show(fake, "app.service"),
        [str(fake.path), "--no-ask-password", "restart", "--", "app.service"],
        _show(fake, "app.service"),
    ]


async def test_restart_of_a_stopped_unit_has_no_old_pid(fake: FakeSystemctl) -> None:
    fake.add_unit("app.service")
    state = fake.state()
    stopped = state["units"]["app.service"]["pid"]
    state["units"]["app.service"]["pid"] = 0
    fake._save(state)
    result = await _restart(fake).recover(Target("w1", None))
    assert result.detail["old_pid"] is None
    assert result.detail["new_pid"] == fake.main_pid("app.service") != stopped
    assert "old_state" not in result.detail


async def test_user_units_pass_user_to_every_call(fake: FakeSystemctl) -> None:
    fake.add_unit("app.service")
    await _restart(fake, user=True).recover(Target("w1", None))
    calls = fake.calls()
    assert len(calls) == 3
    assert all(call[1] == "--user" for call in calls)


async def test_system_units_never_pass_user(fake: FakeSystemctl) -> None:
    fake.add_unit("app.service")
    await _restart(fake).recover(Target("w1", None))
    assert not any("--user" in call for call in fake.calls())


async def test_systemctl_is_found_on_path(
    fake: FakeSystemctl, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.add_unit("app.service")
    monkeypatch.setenv("PATH", f"{fake.path.parent}{os.pathsep}{os.environ['PATH']}")
    result = await SystemdRestart("app").recover(Target("w1", None))
    assert result.detail["unit"] == "app.service"
    assert fake.calls()[0][0] == str(fake.path)  # the interpreter sees the resolved path


async def test_instances_of_a_template_unit(fake: FakeSystemctl) -> None:
    fake.add_unit("app@w-7.service")
    result = await _restart(fake, "app@{id}").recover(Target("w-7", None))
    assert result.detail["unit"] == "app@w-7.service"


# ----------------------------------------------------------------- failures


async def test_unknown_unit_is_permanent_and_never_restarted(fake: FakeSystemctl) -> None:
    with pytest.raises(PermanentRecoveryError) as info:
        await _restart(fake, "nope").recover(Target("w1", None))
    assert str(info.value) == (
        "systemd has no unit nope.service; check [process] unit or the process column"
    )
    assert fake.calls() == [_show(fake, "nope.service")]


@pytest.mark.parametrize(
    ("load", "message"),
    [
        ("masked", r"^systemd unit app.service is masked; unmask it \(systemctl unmask app"),
        ("bad-setting", r"^systemd could not load unit app.service \(LoadState=bad-setting\)"),
    ],
)
async def test_unloadable_unit_is_permanent(fake: FakeSystemctl, load: str, message: str) -> None:
    fake.add_unit("app.service", load=load)
    with pytest.raises(PermanentRecoveryError, match=message):
        await _restart(fake).recover(Target("w1", None))
    assert len(fake.calls()) == 1


@pytest.mark.parametrize(
    ("code", "stderr", "error", "cause"),
    [
        (5, "Unit app.service not loaded.", PermanentRecoveryError, "(unit not loaded)"),
        (4, "Access denied", PermanentRecoveryError, "(no such unit or permission denied)"),
        (1, "Job for app.service failed.", TransientRecoveryError, ""),
        (3, "", TransientRecoveryError, ""),
    ],
)
async def test_restart_exit_codes(
    fake: FakeSystemctl, code: int, stderr: str, error: type[RecoveryError], cause: str
) -> None:
    fake.add_unit("app.service", mode="fail", exit=code, stderr="x" * 300 + "\n" + stderr)
    with pytest.raises(RecoveryError) as info:
        await _restart(fake).recover(Target("w1", None))
    assert type(info.value) is error
    message = str(info.value)
    head = f"{fake.path} restart app.service exited with {code}"
    assert message.startswith(f"{head} {cause}: " if cause else f"{head}: ")
    tail = ("x" * 300 + " " + stderr).strip()[-200:] if stderr else "x" * 200
    assert tail in message  # the last 200 characters of stderr, on one line
    assert "\n" not in message
    if code == 4:
        assert message.endswith("(deploy/polkit/50-watchdog.rules)")


async def test_show_failing_is_transient(fake: FakeSystemctl) -> None:
    fake.add_unit("app.service", mode="show-fails")
    with pytest.raises(TransientRecoveryError) as info:
        await _restart(fake).recover(Target("w1", None))
    assert str(info.value) == (
        f"{fake.path} show app.service exited with 1: Failed to connect to bus: "
        "No such file or directory; check the unit (systemctl status app.service)"
    )


async def test_same_main_pid_after_restart_is_transient(fake: FakeSystemctl) -> None:
    pid = fake.add_unit("app.service", mode="same-pid")
    with pytest.raises(TransientRecoveryError) as info:
        await _restart(fake).recover(Target("w1", None))
    assert f"MainPID unchanged ({pid})" in str(info.value)
    assert len(fake.calls()) == 3


async def test_no_main_pid_after_restart_is_transient(fake: FakeSystemctl) -> None:
    fake.add_unit("app.service", mode="dies")
    with pytest.raises(TransientRecoveryError, match=r"has no main process \(MainPID=0\)"):
        await _restart(fake).recover(Target("w1", None))


async def test_hanging_restart_is_killed_reaped_and_transient(fake: FakeSystemctl) -> None:
    fake.add_unit("app.service", mode="hang")
    fds = _open_fds()
    started = time.monotonic()
    with pytest.raises(TransientRecoveryError) as info:
        await _restart(fake, timeout=1.5).recover(Target("w1", None))
    assert time.monotonic() - started < 5
    assert str(info.value) == (
        f"{fake.path} restart app.service did not finish within 1.5s and was killed; "
        "raise [process] timeout above the unit's start-up time"
    )
    await _assert_gone(*await _pids_from(fake.pidfile))
    assert _open_fds() == fds  # both pipes closed


async def test_hanging_show_is_killed_reaped_and_transient(fake: FakeSystemctl) -> None:
    fake.add_unit("app.service", mode="show-hangs")
    with pytest.raises(TransientRecoveryError) as info:
        await _restart(fake, timeout=1).recover(Target("w1", None))
    assert str(info.value) == (
        f"{fake.path} show app.service did not finish within 1s and was killed; "
        "check that systemd answers on D-Bus (systemctl status)"
    )
    await _assert_gone(*await _pids_from(fake.pidfile))
    assert len(fake.calls()) == 1


async def test_restart_cancelled_by_the_caller_still_cleans_up(fake: FakeSystemctl) -> None:
    fake.add_unit("app.service", mode="hang")
    fds = _open_fds()
    task = asyncio.create_task(_restart(fake).recover(Target("w1", None)))
    pids = await _pids_from(fake.pidfile)
    task.cancel()  # what the engine's asyncio.timeout does
    with pytest.raises(asyncio.CancelledError):
        await task
    await _assert_gone(*pids)
    assert _open_fds() == fds


async def test_missing_systemctl_is_permanent(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-systemctl")
    restart = SystemdRestart("app.service", systemctl=missing)
    with pytest.raises(PermanentRecoveryError) as info:
        await restart.recover(Target("w1", None))
    assert str(info.value) == (
        f"cannot run {missing}: No such file or directory; "
        "install systemd or check the systemctl path"
    )


@pytest.mark.parametrize(
    "target",
    [
        Target("a b", None),
        Target("../x", None),
        Target("$(rm)", None),
        Target("-rf", None),
        Target("w1", "--kill-all"),
        Target("w1", "a/b"),
    ],
    ids=repr,
)
async def test_unsafe_names_are_refused_before_running(fake: FakeSystemctl, target: Target) -> None:
    restart = _restart(fake, "app@{process}")
    with pytest.raises(PermanentRecoveryError, match=r"^unsafe (instance id|process name) "):
        await restart.recover(target)
    assert fake.calls() == []


# ----------------------------------------------------------------- locate


async def test_locate_returns_the_main_pid(fake: FakeSystemctl) -> None:
    pid = fake.add_unit("app.service")
    fake.add_unit("stopped.service", mode="same-pid")
    state = fake.state()
    state["units"]["stopped.service"]["pid"] = 0
    fake._save(state)
    locator: ProcessLocator = _restart(fake)
    assert await locator.locate("app.service") == pid
    assert await locator.locate("app") == pid  # a bare name is a service
    assert await locator.locate("stopped.service") is None
    assert await locator.locate("nope.service") is None


async def test_locate_refuses_unsafe_names(fake: FakeSystemctl) -> None:
    with pytest.raises(PermanentRecoveryError):
        await _restart(fake).locate("-H host")
    assert fake.calls() == []


# ----------------------------------------------------------------- generations


async def test_generation_is_the_main_pid_and_its_start(fake: FakeSystemctl) -> None:
    pid = fake.add_unit("app.service", started=1_764_465_752)  # Sun 2025-11-30 01:22:32 UTC
    source: GenerationSource = _restart(fake)
    assert await source.generation("app.service") == Generation(pid, 1_764_465_752.0)
    assert await source.generation("app") == Generation(pid, 1_764_465_752.0)


async def test_a_restart_makes_a_new_generation_that_recover_returns(
    fake: FakeSystemctl,
) -> None:
    fake.add_unit("app.service")
    restart = _restart(fake)
    before = await restart.generation("app.service")

    result = await restart.recover(Target("w1", None))

    after = await restart.generation("app.service")
    assert before is not None
    assert after is not None
    assert not after.same_as(before)
    assert after.started is not None
    assert before.started is not None
    assert after.started > before.started
    assert result.generation == after
    assert after == Generation(fake.main_pid("app.service"), fake.started("app.service"))


async def test_no_main_process_or_no_unit_is_no_generation(fake: FakeSystemctl) -> None:
    fake.add_unit("stopped.service", mode="same-pid")
    state = fake.state()
    state["units"]["stopped.service"]["pid"] = 0
    fake._save(state)
    restart = _restart(fake)
    assert await restart.generation("stopped.service") is None
    assert await restart.generation("nope.service") is None


@pytest.mark.parametrize("stamp", ["", "n/a", "Mon 2026-11-30 01:22:32 XYZT", "garbage"])
async def test_an_unreadable_start_falls_back_to_the_local_process(
    fake: FakeSystemctl, stamp: str
) -> None:
    pid = fake.add_unit("app.service", stamp=stamp)
    generation = await _restart(fake).generation("app.service")
    assert generation == Generation(pid, round(psutil.Process(pid).create_time(), 2))


async def test_an_unreadable_start_of_an_invisible_process_is_unknown(
    fake: FakeSystemctl,
) -> None:
    fake.add_unit("app.service", stamp="n/a")
    gone = fake.process()
    psutil.Process(gone).kill()
    fake._procs[-1].wait(timeout=5)  # reaped: the PID names no process now
    state = fake.state()
    state["units"]["app.service"]["pid"] = gone
    fake._save(state)
    assert await _restart(fake).generation("app.service") == Generation(gone, None)


async def test_generation_errors_are_recovery_errors(fake: FakeSystemctl) -> None:
    fake.add_unit("app.service", mode="show-fails")
    with pytest.raises(TransientRecoveryError, match=r"show app\.service exited with 1"):
        await _restart(fake).generation("app.service")
    with pytest.raises(PermanentRecoveryError, match="unsafe systemd unit"):
        await _restart(fake).generation("-H host")
    assert len(fake.calls()) == 1


@pytest.fixture
def eastern(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The local zone is US Eastern (EST/EDT) for the test."""
    monkeypatch.setenv("TZ", "EST+5EDT,M3.2.0,M11.1.0")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mon 2026-11-30 01:22:32 UTC", 1_796_001_752.0),
        ("Mon 2026-11-30 01:22:32 GMT", 1_796_001_752.0),
        ("Mon 2026-11-30 01:22:32.250000 UTC", 1_796_001_752.25),
        ("Mon 2026-11-30 01:22:32 EST", 1_796_001_752.0 + 5 * 3600),
        ("Sun 2026-06-14 12:00:00 EDT", 1_781_438_400.0 + 4 * 3600),
        ("Mon 2026-11-30 01:22:32 CET", None),  # not the local zone: not guessed at
        ("", None),
        ("n/a", None),
        ("Mon 2026-13-30 01:22:32 UTC", None),
        ("Mon 2026-11-30 01:22:32.x5 UTC", None),
        ("2026-11-30 01:22:32 UTC", None),
    ],
)
@pytest.mark.usefixtures("eastern")
def test_parse_timestamp(text: str, expected: float | None) -> None:
    assert parse_timestamp(text) == expected


# ----------------------------------------------------------------- keys and templates


@pytest.mark.parametrize(
    ("template", "target", "unit"),
    [
        ("app.service", Target("w1", None), "app.service"),
        ("app", Target("w1", None), "app.service"),
        ("app.v2", Target("w1", None), "app.v2.service"),
        ("app.service", Target("w1", "worker"), "worker.service"),  # the process column wins
        ("app.service", Target("w1", "worker.socket"), "worker.socket"),
        ("app@{id}.service", Target("w:7", None), "app@w:7.service"),
        ("app@{id}", Target("w1", "pool"), "pool.service"),
        ("app@{process}.service", Target("w1", "pool"), "app@pool.service"),
        ("app@{process}", Target("w1", None), "app@w1.service"),
        ("{process}", Target("w1", "x.target"), "x.target"),
    ],
)
def test_key_is_the_unit_name(template: str, target: Target, unit: str) -> None:
    restart: Recovery = SystemdRestart(template, timeout=4)
    assert restart.key(target) == unit
    assert (restart.action, restart.timeout) == (Action.PROCESS_RESTART, 4)


@pytest.mark.parametrize(
    ("template", "target", "message"),
    [
        ("app@{process}", Target("w1", "a@b"), r"is a template or has several '@'"),
        ("app.service", Target("w1", "app@"), r"'app@.service' is a template"),
        ("app@{id}", Target("w1\n", None), r"^unsafe instance id 'w1\\n'"),
    ],
)
def test_key_refuses_bad_units(template: str, target: Target, message: str) -> None:
    with pytest.raises(PermanentRecoveryError, match=message):
        SystemdRestart(template).key(target)


@pytest.mark.parametrize(
    ("template", "kwargs", "message"),
    [
        ("app@{ID}.service", {}, r"unknown placeholder\(s\) \{ID\}"),
        ("app service", {}, "systemd unit 'app service' is invalid: unsafe systemd unit"),
        ("app@.service", {}, "is a template"),
        ("", {}, "is invalid"),
        ("app", {"timeout": 0}, "timeout must be positive"),
        ("app", {"systemctl": ""}, "systemctl must be a program name or path"),
    ],
)
def test_bad_configuration_is_refused(template: str, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SystemdRestart(template, **kwargs)
