"""The deployment files: the systemd unit is valid and well sandboxed, the polkit rule and
the sudoers drop-in grant exactly one restart.

`systemd-analyze verify` and `security --offline` read unit files without a running
systemd, so they work in containers too. verify only warns (exit 0) about unknown keys and
typos, so every line it prints about our unit fails the test.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "watchdog.service"
POLKIT_RULE = ROOT / "deploy" / "polkit" / "50-watchdog.rules"
SUDOERS = ROOT / "deploy" / "sudoers.d" / "watchdog"
SHIPPED_EXEC = "ExecStart=/opt/watchdog/bin/watchdogctl "
MAX_EXPOSURE = 3.0
OFFLINE_SINCE = 250  # systemd-analyze security --offline= appeared in systemd 250
# A located warning about some other unit file on the host, e.g. one our unit depends on.
_OTHER_UNIT_FILE = re.compile(r"^(/\S+):\d+: ")


@pytest.fixture(scope="module")
def analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail(
            "systemd-analyze not found; install systemd (apt-get install systemd)", pytrace=False
        )
    return found


@pytest.fixture(scope="module")
def systemd_version(analyze: str) -> int:
    out = subprocess.run([analyze, "--version"], capture_output=True, text=True, check=True)
    match = re.match(r"systemd (\d+)", out.stdout)
    assert match, f"cannot read the version from {out.stdout!r}"
    return int(match.group(1))


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at the watchdogctl installed here.

    verify insists that ExecStart's binary exists; /opt/watchdog/bin/watchdogctl does not on
    a development machine. Everything else is kept as shipped.
    """
    watchdogctl = Path(sys.executable).parent / "watchdogctl"
    if not watchdogctl.exists():
        pytest.fail("watchdogctl is not installed; run `make install`", pytrace=False)
    text = UNIT.read_text()
    assert text.count(SHIPPED_EXEC) == 1, f"{UNIT} should start {SHIPPED_EXEC.strip()}"
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(SHIPPED_EXEC, f"ExecStart={watchdogctl} "))
    return copy


def _verify(analyze: str, unit: Path) -> tuple[int, list[str]]:
    """verify's exit code and every line it printed about `unit` (not about other units)."""
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
        check=False,
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    ours = []
    for line in lines:
        other = _OTHER_UNIT_FILE.match(line)
        if other is None or Path(other.group(1)) == unit:
            ours.append(line)
    return result.returncode, ours


def _as_root(unit: Path) -> None:
    """Run the copy as root: only for a verify that cannot resolve the `watchdog` user.

    We create no users on the machine running the tests, and User=/Group= are plain names
    that verify has no other opinion about; the shipped unit keeps User=watchdog.
    """
    text = re.sub(r"(?m)^(User|Group)=watchdog$", r"\1=root", unit.read_text())
    unit.write_text(text)


def test_unit_verifies_without_any_warning(analyze: str, unit_copy: Path) -> None:
    code, lines = _verify(analyze, unit_copy)
    if any(re.search(r"\b(user|group)\b.*\bwatchdog\b", line, re.I) for line in lines):
        _as_root(unit_copy)
        code, lines = _verify(analyze, unit_copy)
    assert (code, lines) == (0, []), "systemd-analyze verify complained:\n" + "\n".join(lines)


def test_verify_check_catches_a_typo(analyze: str, unit_copy: Path) -> None:
    """verify exits 0 on unknown keys: make sure our check still sees them."""
    unit_copy.write_text(unit_copy.read_text().replace("UMask=", "UMsk="))
    code, lines = _verify(analyze, unit_copy)
    assert code == 0
    assert any("Unknown key 'UMsk'" in line for line in lines), lines


def test_unit_exposure_is_low(
    analyze: str, systemd_version: int, unit_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if systemd_version < OFFLINE_SINCE:
        pytest.fail(
            f"systemd {systemd_version} has no `systemd-analyze security --offline`; "
            f"install systemd {OFFLINE_SINCE} or newer",
            pytrace=False,
        )
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(unit_copy)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_COLORS": "0"},
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, f"no exposure figure in:\n{result.stdout}{result.stderr}"
    exposure = float(match.group(1))
    with capsys.disabled():  # shown without -s
        print(f"\n{UNIT.name}: systemd-analyze security exposure {exposure} (limit {MAX_EXPOSURE})")
    failing = [line for line in result.stdout.splitlines() if line.startswith("✗")]
    assert exposure < MAX_EXPOSURE, (
        f"exposure {exposure} is not below {MAX_EXPOSURE}; tighten the sandbox:\n"
        + "\n".join(failing)
    )


def test_unit_keeps_what_the_daemon_relies_on() -> None:
    """Settings whose loss would not show up in verify or the exposure figure."""
    settings = [line for line in UNIT.read_text().splitlines() if not line.startswith("#")]
    for expected in (
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30",
        "TimeoutStopSec=45",  # above daemon.shutdown_timeout (30 s)
        "KillSignal=SIGTERM",
        "User=watchdog",
        "Group=watchdog",
        "StateDirectory=watchdog",
        "ReadWritePaths=/var/lib/watchdog",
        "EnvironmentFile=-/etc/watchdog/env",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",  # AF_UNIX: D-Bus to systemd
    ):
        assert expected in settings, f"{UNIT} lost {expected}"
    assert not any(line.startswith("DynamicUser=yes") for line in settings)


POLKIT_HARNESS = """
const fs = require("fs");
let rule = null;
const polkit = {
  Result: { YES: "yes", NO: "no", AUTH_ADMIN: "auth_admin", NOT_HANDLED: null },
  addRule(f) { rule = f; },
};
eval(fs.readFileSync(process.argv[1], "utf8"));
const asks = JSON.parse(process.argv[2]);
console.log(JSON.stringify(asks.map(([user, id, unit, verb]) => {
  const details = { unit: unit, verb: verb };
  return rule({ id: id, lookup: (key) => details[key] }, { user: user });
})));
"""


def test_polkit_rule_allows_only_restarting_the_app() -> None:
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.fail(
            "node is not installed (apt-get install nodejs): cannot evaluate the "
            "polkit rule's JavaScript",
            pytrace=False,
        )
    manage = "org.freedesktop.systemd1.manage-units"
    asks = [
        ["watchdog", manage, "app.service", "restart"],
        ["watchdog", manage, "app.service", "stop"],
        ["watchdog", manage, "app.service", "start"],
        ["watchdog", manage, "sshd.service", "restart"],
        ["someone", manage, "app.service", "restart"],
        ["watchdog", "org.freedesktop.systemd1.manage-unit-files", "app.service", "restart"],
    ]
    result = subprocess.run(
        [node, "-e", POLKIT_HARNESS, str(POLKIT_RULE), json.dumps(asks)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout) == ["yes", None, None, None, None, None]


def test_sudoers_drop_in_parses_and_grants_one_command() -> None:
    rules = [
        line
        for line in SUDOERS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules == ["watchdog ALL=(root) NOPASSWD: /usr/bin/systemctl restart app.service"]
    visudo = shutil.which("visudo") or shutil.which("visudo", path="/usr/sbin:/sbin")
    if visudo is None:
        pytest.fail(
            "visudo is not installed (apt-get install sudo): cannot check the "
            "sudoers line's syntax",
            pytrace=False,
        )
    result = subprocess.run([visudo, "-cf", str(SUDOERS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
