"""A tiny sd_notify(3) client: tell systemd we are ready, alive or stopping.

systemd passes the socket in $NOTIFY_SOCKET (a path, or `@name` for an abstract socket) to
services with `Type=notify`; without it every call is a no-op that returns False, so the
daemon runs the same under systemd, in a container or in a terminal. Sending never raises
and never logs: a lost notification must not take the watchdog down.

`SystemdHeartbeat` turns good cycles into READY=1 (once) and WATCHDOG=1 (rate limited), so
a loop that hangs stops pinging and systemd restarts the process after `WatchdogSec=`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from watchdog.clock import SystemClock
from watchdog.core.ports import Clock

_USEC = 1_000_000


class Notifier:
    """Send sd_notify messages to the socket in $NOTIFY_SOCKET (read once, at creation).

    Each method returns True when the datagram was sent, False when notification is off
    or the send failed.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _address(env.get("NOTIFY_SOCKET", ""))
        self._interval = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        """Whether $NOTIFY_SOCKET names a socket we can send to."""
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=value` lines as one datagram."""
        if self._address is None or not assignments:
            return False
        data = "\n".join(assignments).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)  # a full queue must not stall the event loop
                sock.sendto(data, self._address)
        except OSError:
            return False
        return True

    def ready(self) -> bool:
        """READY=1: start-up is complete (systemctl start returns, the watchdog is armed)."""
        return self.notify("READY=1")

    def watchdog_ping(self) -> bool:
        """WATCHDOG=1: we are alive; resets systemd's WatchdogSec= timer."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """STOPPING=1: shutdown has begun."""
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        """STATUS=text: a one-line status shown by `systemctl status`."""
        return self.notify(f"STATUS={' '.join(text.split())}")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of $WATCHDOG_USEC), or None when the watchdog is off.

        None also when $WATCHDOG_PID is set to another process's PID (the variables were
        inherited, not meant for us) or the values are not positive integers.
        """
        return self._interval


class SystemdHeartbeat:
    """READY=1 after the first good cycle; WATCHDOG=1 at most once per ping interval.

    Call `on_good_cycle()` after each cycle that completed; a hung or failing loop then
    stops pinging and systemd restarts the process once `WatchdogSec=` passes.
    """

    def __init__(self, notifier: Notifier, clock: Clock | None = None) -> None:
        self._notifier = notifier
        self._clock = clock or SystemClock()
        self._interval = notifier.watchdog_interval()
        self._ready = False
        self._last_ping: float | None = None

    @property
    def ready(self) -> bool:
        """Whether READY=1 has been sent."""
        return self._ready

    def on_good_cycle(self) -> list[str]:
        """Send what is due; returns the messages sent (empty when none or all failed)."""
        sent: list[str] = []
        if not self._notifier.enabled:
            return sent
        if not self._ready and self._notifier.ready():
            self._ready = True
            sent.append("READY=1")
        if self._ping_due() and self._notifier.watchdog_ping():
            self._last_ping = self._clock.monotonic()
            sent.append("WATCHDOG=1")
        return sent

    def on_handled_outage(self) -> list[str]:
        """The loop is alive but its database is not: keep pinging, do not claim READY.

        A database outage must not make systemd kill and restart the watchdog in a loop;
        a hung or crashing loop still stops the pings.
        """
        if not self._notifier.enabled or not self._ping_due():
            return []
        if self._notifier.watchdog_ping():
            self._last_ping = self._clock.monotonic()
            return ["WATCHDOG=1"]
        return []

    def _ping_due(self) -> bool:
        if self._interval is None:
            return False
        if self._last_ping is None:
            return True
        return self._clock.monotonic() - self._last_ping >= self._interval


def _address(value: str) -> str | bytes | None:
    """The socket address of $NOTIFY_SOCKET: a path, `@name` (abstract), else None."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()  # the Linux abstract namespace
    return None  # unset, empty, or a kind we do not speak (e.g. vsock:)


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
        pid = int(env["WATCHDOG_PID"]) if env.get("WATCHDOG_PID") else os.getpid()
    except ValueError:
        return None
    if usec <= 0 or pid != os.getpid():
        return None
    return usec / _USEC / 2
