"""`watchdogctl`: a thin click CLI. Parse, build, call one function, print, exit.

Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error (70: a bug of ours).
Errors are one line naming the cause and the fix; never a traceback.
"""

from watchdog.cli import admin, inspect, steer
from watchdog.cli.base import cli, main

__all__ = ["admin", "cli", "inspect", "main", "steer"]
