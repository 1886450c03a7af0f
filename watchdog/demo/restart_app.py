"""Stop the demo application named by a pidfile: the demo's process-restart command.

``python -m watchdog.demo.restart_app --pidfile PATH [--timeout 10]`` sends SIGTERM to the PID
in the pidfile and waits, at most ``--timeout`` seconds, until that process is gone. Exit 0
when it stopped or was not running (no pidfile, no such process, or the PID now belongs to an
unrelated program); exit 1 with one line on stderr otherwise. Whoever started the application
respawns it; this command only stops it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

__all__ = ["main"]

_APP_MARKERS = (b"watchdog.demo.app", b"watchdog/demo/app.py")


class RestartError(Exception):
    """The application could not be stopped."""


def _read_pid(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RestartError(f"cannot read {pidfile}: {exc.strerror}") from exc
    if not text.isdigit() or int(text) <= 1:
        raise RestartError(f"{pidfile} does not hold a process id: {text[:40]!r}")
    return int(text)


def _proc_file(pid: int, name: str) -> bytes | None:
    """Read ``/proc/PID/NAME``; None where /proc is unavailable or the process is gone."""
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return None


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting for its parent to reap it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _proc_file(pid, "stat")
    # /proc/PID/stat: "pid (comm) S ..."; the state letter follows the last ')'.
    return stat is None or stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X")


def _is_demo_app(pid: int) -> bool:
    """Guard against a stale pidfile whose PID was reused by another program."""
    cmdline = _proc_file(pid, "cmdline")
    return cmdline is None or any(marker in cmdline for marker in _APP_MARKERS)


def stop(pidfile: Path, timeout: float) -> str:
    """Stop the application; return what happened, raise RestartError when it did not stop."""
    pid = _read_pid(pidfile)
    if pid is None:
        return f"not running ({pidfile} missing)"
    if not _alive(pid) or not _is_demo_app(pid):
        return f"not running (stale pidfile, pid {pid})"
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return f"not running (pid {pid} gone)"
    except PermissionError as exc:
        raise RestartError(f"not allowed to signal pid {pid}") from exc
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            raise RestartError(f"pid {pid} still running {timeout:g}s after SIGTERM")
        time.sleep(0.05)
    return f"stopped pid {pid}"


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, stop the application and return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m watchdog.demo.restart_app", description=__doc__
    )
    parser.add_argument("--pidfile", required=True, type=Path, help="the application's pidfile")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (10)")
    args = parser.parse_args(argv)
    try:
        outcome = stop(args.pidfile, max(args.timeout, 0.0))
    except RestartError as exc:
        print(f"restart_app: {exc}", file=sys.stderr, flush=True)
        return 1
    print(f"restart_app: {outcome}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
