"""The sd_notify client against a REAL unix datagram socket standing in for systemd's.

Time is a FakeClock, so the watchdog's rate limit is tested without sleeping.
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator

import pytest

from watchdog.daemon.sdnotify import Notifier, SystemdHeartbeat
from watchdog.testing import FakeClock

WATCHDOG_USEC = 30_000_000  # WatchdogSec=30: ping at most every 15 s


class Listener:
    """The receiving end of NOTIFY_SOCKET."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address

    def received(self) -> list[str]:
        """Every datagram waiting, without blocking."""
        messages = []
        while True:
            try:
                messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return messages


def _listen(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setblocking(False)
    return sock


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    # A short path under /tmp: sun_path holds only 108 bytes, too few for pytest's tmp_path.
    with tempfile.TemporaryDirectory(prefix="sdn-", dir="/tmp") as directory:
        path = os.path.join(directory, "notify")
        with _listen(path) as sock:
            monkeypatch.setenv("NOTIFY_SOCKET", path)
            monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
            monkeypatch.delenv("WATCHDOG_PID", raising=False)
            yield Listener(sock, path)


def test_messages_arrive_on_the_socket(listener: Listener) -> None:
    notifier = Notifier()
    assert notifier.enabled
    assert notifier.ready()
    assert notifier.watchdog_ping()
    assert notifier.status("3 unhealthy,\n1 restarting")
    assert notifier.stopping()
    assert listener.received() == [
        "READY=1",
        "WATCHDOG=1",
        "STATUS=3 unhealthy, 1 restarting",
        "STOPPING=1",
    ]


def test_abstract_socket_names_work(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"watchdog-test-{uuid.uuid4().hex}"
    with _listen(b"\0" + name.encode()) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", f"@{name}")
        assert Notifier().ready()
        assert sock.recv(4096) == b"READY=1"


@pytest.mark.parametrize("value", [None, "", "@", "relative/path", "vsock:2:1234"])
def test_without_a_usable_notify_socket_everything_is_a_no_op(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    notifier = Notifier()
    assert not notifier.enabled
    assert not any(
        [notifier.ready(), notifier.watchdog_ping(), notifier.stopping(), notifier.status("x")]
    )
    assert SystemdHeartbeat(notifier, FakeClock()).on_good_cycle() == []


def test_send_errors_return_false_and_never_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryDirectory(prefix="sdn-", dir="/tmp") as directory:
        monkeypatch.setenv("NOTIFY_SOCKET", os.path.join(directory, "nobody-listens"))
        notifier = Notifier()
        assert notifier.enabled
        assert notifier.ready() is False
        heartbeat = SystemdHeartbeat(notifier, FakeClock())
        assert heartbeat.on_good_cycle() == []
        assert not heartbeat.ready


def test_a_full_socket_queue_does_not_block(listener: Listener) -> None:
    notifier = Notifier()
    results = [notifier.status("x" * 1000) for _ in range(10_000)]
    assert results[0]
    assert not results[-1]  # the receiver never reads: the queue fills, sending fails


def test_interval_is_half_of_watchdog_usec(listener: Listener) -> None:
    assert Notifier().watchdog_interval() == 15.0


def test_interval_for_this_process_when_watchdog_pid_matches(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier().watchdog_interval() == 15.0


@pytest.mark.parametrize(
    ("usec", "pid"),
    [
        ("30000000", "1"),  # meant for another process: we inherited it
        ("0", None),
        ("-5", None),
        ("soon", None),
        (None, None),
    ],
)
def test_no_interval_when_the_watchdog_is_not_ours(
    listener: Listener, monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None
) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    notifier = Notifier()
    assert notifier.watchdog_interval() is None
    heartbeat = SystemdHeartbeat(notifier, FakeClock())
    assert heartbeat.on_good_cycle() == ["READY=1"]  # ready still, but never a ping
    assert heartbeat.on_good_cycle() == []
    assert listener.received() == ["READY=1"]


def test_environment_can_be_passed_in(listener: Listener) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "2000000"})
    assert notifier.watchdog_interval() == 1.0
    assert Notifier({}).enabled is False


# ----------------------------------------------------------------- heartbeat


def test_nothing_is_sent_before_the_first_good_cycle(listener: Listener) -> None:
    SystemdHeartbeat(Notifier(), FakeClock())
    assert listener.received() == []


def test_ready_after_the_first_good_cycle_only(listener: Listener) -> None:
    clock = FakeClock()
    heartbeat = SystemdHeartbeat(Notifier(), clock)
    assert not heartbeat.ready
    assert heartbeat.on_good_cycle() == ["READY=1", "WATCHDOG=1"]
    assert heartbeat.ready
    for _ in range(5):
        clock.advance(20)
        assert heartbeat.on_good_cycle() == ["WATCHDOG=1"]
    assert listener.received().count("READY=1") == 1


def test_pings_at_most_once_per_half_interval(listener: Listener) -> None:
    clock = FakeClock()
    heartbeat = SystemdHeartbeat(Notifier(), clock)
    heartbeat.on_good_cycle()
    listener.received()
    pinged_at = []
    for second in range(1, 61):  # a good cycle every second for a minute
        clock.advance(1)
        if heartbeat.on_good_cycle():
            pinged_at.append(second)
    assert pinged_at == [15, 30, 45, 60]
    assert listener.received() == ["WATCHDOG=1"] * 4


def test_no_ping_without_good_cycles(listener: Listener) -> None:
    """A hung or failing loop stops pinging, so systemd's WatchdogSec= fires."""
    clock = FakeClock()
    heartbeat = SystemdHeartbeat(Notifier(), clock)
    heartbeat.on_good_cycle()
    listener.received()
    clock.advance(29)  # no good cycle for 29 s: nothing is sent on our own
    assert listener.received() == []
    assert heartbeat.on_good_cycle() == ["WATCHDOG=1"]


class FlakyNotifier(Notifier):
    """Pings fail while `down` is set, as when systemd's queue is full."""

    down = False

    def watchdog_ping(self) -> bool:
        return False if self.down else super().watchdog_ping()


def test_a_failed_ping_is_retried_on_the_next_good_cycle(listener: Listener) -> None:
    notifier = FlakyNotifier()
    clock = FakeClock()
    heartbeat = SystemdHeartbeat(notifier, clock)
    heartbeat.on_good_cycle()
    clock.advance(15)
    notifier.down = True
    assert heartbeat.on_good_cycle() == []
    notifier.down = False
    clock.advance(1)
    assert heartbeat.on_good_cycle() == ["WATCHDOG=1"]


def test_stopping_is_sent(listener: Listener) -> None:
    notifier = Notifier()
    SystemdHeartbeat(notifier, FakeClock()).on_good_cycle()
    assert notifier.stopping()
    assert listener.received()[-1] == "STOPPING=1"
