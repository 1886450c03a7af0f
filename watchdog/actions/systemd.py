"""PROCESS_RESTART through systemd: `systemctl restart UNIT`, checked by the unit's MainPID.

A restart is one `systemctl show` (is the unit known, which PID is its main process), the
restart itself, and a second `show`: it succeeded only when systemctl exited 0 and the unit
then has a main process other than the one it had before. A process's generation is its
MainPID and ExecMainStartTimestamp (see `parse_timestamp`). systemctl runs directly, never
through a shell, in its own session, so that on timeout its process group can be killed and
reaped like the command backend's. Every name put into its argv has passed
`naming.check_safe_name`.

The unit name comes from a template such as `app.service`, `app@{id}.service` or
`{process}`; see `SystemdRestart`. Run as a system service, the watchdog's user needs polkit
permission to restart the unit (deploy/polkit/50-watchdog.rules).
"""

from __future__ import annotations

import asyncio
import calendar
import time
from collections.abc import Sequence
from dataclasses import dataclass

from watchdog.actions.evidence import local_generation, process_facts, restart_evidence
from watchdog.actions.naming import (
    check_placeholders,
    check_safe_name,
    placeholders,
    resolve_process,
    substitute,
)
from watchdog.actions.subprocesses import one_line, run_bounded, tail
from watchdog.core.errors import PermanentRecoveryError, RecoveryError, TransientRecoveryError
from watchdog.core.model import Action, ActionResult, Generation, Target

UNIT_SUFFIXES = frozenset(
    {
        "automount",
        "device",
        "mount",
        "path",
        "scope",
        "service",
        "slice",
        "socket",
        "swap",
        "target",
        "timer",
    }
)
"""The unit types systemd knows; a name ending in none of them gets `.service`."""

# systemctl's LSB exit codes that no retry will change.
EXIT_NOPERMISSION = 4  # "no such unit" for status, "access denied" for restart
EXIT_NOTINSTALLED = 5  # "unit not loaded"
_PERMANENT_EXITS = {
    EXIT_NOPERMISSION: (
        "no such unit or permission denied",
        "check [process] unit and let the watchdog's user restart it "
        "(deploy/polkit/50-watchdog.rules)",
    ),
    EXIT_NOTINSTALLED: ("unit not loaded", "check [process] unit or the process column"),
}
_PLACEHOLDERS = ("{process}", "{id}")
_PROPERTIES = ("LoadState", "MainPID", "ExecMainStartTimestamp")
_UTC_ZONES = frozenset({"UTC", "GMT"})


@dataclass(frozen=True, slots=True)
class UnitState:
    """What `systemctl show` says about a unit: its LoadState, MainPID (0: none) and when
    its main process started (Unix seconds; None when it has none or it cannot be told)."""

    load_state: str
    main_pid: int
    started: float | None = None

    @property
    def generation(self) -> Generation | None:
        """The main process's generation; None without one. The start time falls back to
        the process's own (psutil) when systemctl's timestamp could not be read."""
        return local_generation(self.main_pid, self.started)


class SystemdRestart:
    """Restart the systemd unit hosting an instance; also a `ProcessLocator` (MainPID).

    `unit_template` names the unit. Without `{process}` it works like the command
    backend's default process: a target's own process (the process column) is the unit,
    else the template with `{id}` replaced by the instance id (`app.service`,
    `app@{id}.service`). With `{process}`, the target's process (or the instance id when it
    has none) is put into the template (`app@{process}.service`). The result must be a safe
    name; `.service` is appended when it has no unit suffix.
    """

    def __init__(
        self,
        unit_template: str,
        timeout: float = 30.0,
        user: bool = False,
        systemctl: str = "systemctl",
    ) -> None:
        check_placeholders("systemd unit", unit_template, _PLACEHOLDERS)
        sample = substitute(unit_template, dict.fromkeys(_PLACEHOLDERS, "x"))
        try:
            unit_name(check_safe_name("systemd unit", sample))
        except RecoveryError as exc:
            raise ValueError(f"systemd unit {unit_template!r} is invalid: {exc}") from None
        if timeout <= 0:
            raise ValueError(f"systemd timeout must be positive, got {timeout!r}")
        if not systemctl:
            raise ValueError("systemctl must be a program name or path, got ''")
        self._template = unit_template
        self._timeout = timeout
        self._user = user
        self._systemctl = systemctl

    @property
    def action(self) -> Action:
        return Action.PROCESS_RESTART

    @property
    def timeout(self) -> float:
        return self._timeout

    def key(self, target: Target) -> str:
        """The unit to restart; instances sharing a unit share one restart per cycle."""
        if "{process}" not in placeholders(self._template):
            return unit_name(resolve_process(self._template, target))
        instance_id = check_safe_name("instance id", target.instance_id)
        process = check_safe_name("process name", target.process or instance_id)
        name = substitute(self._template, {"{process}": process, "{id}": instance_id})
        return unit_name(check_safe_name("systemd unit", name))

    def argv(self, *args: str) -> list[str]:
        """The systemctl argv for `args`, with `--user` when managing the user's units."""
        return [self._systemctl, *(["--user"] if self._user else []), *args]

    async def recover(self, target: Target) -> ActionResult:
        """Restart the target's unit within `timeout`; the detail has old and new MainPID."""
        unit = self.key(target)
        deadline = asyncio.get_running_loop().time() + self._timeout
        before = await self._show(unit, deadline)
        _require_loaded(unit, before.load_state)
        old_facts = process_facts(before.main_pid)
        await self._restart(unit, deadline)
        after = await self._show(unit, deadline)
        _check_new_pid(unit, before.main_pid, after.main_pid)
        detail = restart_evidence(before.main_pid or None, old_facts, after.main_pid)
        return ActionResult(
            detail={**detail, "unit": unit, "backend": "systemd"},
            generation=after.generation,
        )

    async def generation(self, name: str) -> Generation | None:
        """The MainPID and start time of unit `name` (a `key()` result; a bare name gets
        `.service`); None when it has no main process (stopped, or unknown to systemd).
        Raises a RecoveryError when systemctl cannot be run, fails or outlives `timeout`."""
        unit = unit_name(check_safe_name("systemd unit", name))
        deadline = asyncio.get_running_loop().time() + self._timeout
        return (await self._show(unit, deadline)).generation

    async def locate(self, process: str) -> int | None:
        """The MainPID of unit `process` (a `key()` result; a bare name gets `.service`).

        None when systemd does not know the unit or it has no main process; raises a
        RecoveryError when systemctl cannot be run or fails.
        """
        unit = unit_name(check_safe_name("systemd unit", process))
        deadline = asyncio.get_running_loop().time() + self._timeout
        state = await self._show(unit, deadline)
        return state.main_pid or None

    async def _show(self, unit: str, deadline: float) -> UnitState:
        properties = [f"--property={name}" for name in _PROPERTIES]
        argv = self.argv("show", *properties, "--", unit)
        code, stdout, stderr = await _run(argv, deadline, self._timeout)
        if code != 0:
            raise _exit_error(argv, unit, code, stderr)
        return _parse_show(unit, stdout)

    async def _restart(self, unit: str, deadline: float) -> None:
        argv = self.argv("--no-ask-password", "restart", "--", unit)
        code, _stdout, stderr = await _run(argv, deadline, self._timeout)
        if code != 0:
            raise _exit_error(argv, unit, code, stderr)


def unit_name(name: str) -> str:
    """`name` with `.service` appended unless it ends in a unit suffix; rejects templates."""
    stem, dot, suffix = name.rpartition(".")
    if not (dot and suffix in UNIT_SUFFIXES):
        stem, name = name, f"{name}.service"
    if stem.count("@") > 1 or stem.endswith("@"):
        raise PermanentRecoveryError(
            f"systemd unit {name!r} is a template or has several '@'; "
            "name one instance, e.g. app@{id}.service"
        )
    return name


def _parse_show(unit: str, stdout: bytes) -> UnitState:
    """Read `Key=Value` lines; the order systemctl prints them in is not relied on."""
    values: dict[str, str] = {}
    for line in stdout.decode("utf-8", "replace").splitlines():
        name, _eq, value = line.partition("=")
        values[name] = value
    try:
        load_state, main_pid = values["LoadState"], int(values["MainPID"])
    except (KeyError, ValueError):
        raise TransientRecoveryError(
            f"systemctl show {unit} printed no LoadState/MainPID "
            f"({one_line(tail(stdout))}); check that systemctl is systemd's"
        ) from None
    started = parse_timestamp(values.get("ExecMainStartTimestamp", "")) if main_pid else None
    return UnitState(load_state, main_pid, started)


def parse_timestamp(text: str) -> float | None:
    """Unix seconds of a timestamp as systemctl prints it, `Mon 2026-11-30 01:22:32 UTC`;
    None when empty, `n/a` or not understood.

    The zone is an abbreviation: UTC and GMT are read as such, and one of the local zone's
    (`time.tzname`; systemctl runs here with our environment) as local time. Any other is
    not guessed at: the caller falls back to the main process's own start time.
    """
    words = text.split()
    if len(words) != 4:
        return None
    _weekday, day, clock, zone = words
    clock, _dot, fraction = clock.partition(".")  # with --timestamp=us
    if fraction and not (fraction.isascii() and fraction.isdigit()):
        return None
    part = int(fraction) / 10 ** len(fraction) if fraction else 0.0
    try:
        fields = time.strptime(f"{day} {clock}", "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    if zone in _UTC_ZONES:
        return calendar.timegm(fields) + part
    if zone in time.tzname:
        isdst = time.tzname.index(zone) if time.daylight else 0
        try:
            return time.mktime((*fields[:8], isdst)) + part
        except (OverflowError, ValueError):
            return None
    return None


def _require_loaded(unit: str, load_state: str) -> None:
    if load_state == "not-found":
        raise PermanentRecoveryError(
            f"systemd has no unit {unit}; check [process] unit or the process column"
        )
    if load_state == "masked":
        raise PermanentRecoveryError(
            f"systemd unit {unit} is masked; unmask it (systemctl unmask {unit}) "
            "or check [process] unit"
        )
    if load_state in ("bad-setting", "error"):
        raise PermanentRecoveryError(
            f"systemd could not load unit {unit} (LoadState={load_state}); "
            f"fix its unit file (systemd-analyze verify {unit})"
        )


def _check_new_pid(unit: str, old_pid: int, new_pid: int) -> None:
    if new_pid == 0:
        raise TransientRecoveryError(
            f"systemctl restart {unit} exited 0 but the unit has no main process (MainPID=0); "
            f"check why it stopped (journalctl -u {unit})"
        )
    if new_pid == old_pid:
        raise TransientRecoveryError(
            f"systemctl restart {unit} exited 0 but MainPID unchanged ({old_pid}); "
            "check the unit's Type= and how it restarts"
        )


async def _run(argv: Sequence[str], deadline: float, timeout: float) -> tuple[int, bytes, bytes]:
    """Run systemctl until it exits or `deadline` (loop time); kill its group on timeout."""
    return await run_bounded(
        argv,
        fix="install systemd or check the systemctl path",
        timeout_error=lambda _code: _timeout_error(argv, timeout),
        deadline=deadline,
    )


def _timeout_error(argv: Sequence[str], timeout: float) -> RecoveryError:
    # Killing systemctl does not cancel a restart job it queued: that may still complete.
    fix = (
        "raise [process] timeout above the unit's start-up time"
        if "restart" in argv
        else "check that systemd answers on D-Bus (systemctl status)"
    )
    return TransientRecoveryError(
        f"{_what(argv)} did not finish within {timeout:g}s and was killed; {fix}"
    )


def _exit_error(argv: Sequence[str], unit: str, code: int, stderr: bytes) -> RecoveryError:
    output = one_line(tail(stderr))
    if code in _PERMANENT_EXITS:
        cause, fix = _PERMANENT_EXITS[code]
        return PermanentRecoveryError(
            f"{_what(argv)} exited with {code} ({cause}): {output}; {fix}"
        )
    how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
    return TransientRecoveryError(
        f"{_what(argv)} {how}: {output}; check the unit (systemctl status {unit})"
    )


def _what(argv: Sequence[str]) -> str:
    """`systemctl restart app.service`: the program and its verb and unit, for messages."""
    words = [arg for arg in argv[1:] if not arg.startswith("-")]
    return " ".join([argv[0], words[0], words[-1]]) if words else argv[0]
