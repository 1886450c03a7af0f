"""The status page in a real headless Chromium (Debian's `chromium`), served by the
installed `watchdogctl run` on a real SQLite file: the browser loads `/`, the DOM it built
has the fleet numbers and the frozen instance's row, and `/instances/ID` explains it. A
screenshot of each is kept in `test-artifacts/` (or `$WATCHDOG_TEST_ARTIFACTS`)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.apptable import AppTable
from tests.e2e.helpers import start_daemon, watchdog_env
from tests.waiting import wait_for

ARTIFACTS = Path(
    os.environ.get("WATCHDOG_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")
)
# As a sandboxed root with no network: no sandbox, no GPU, no calls home.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "chromium is not installed (apt-get install chromium): cannot load the status "
            "page in a browser; `make test` installs it when run as root",
            pytrace=False,
        )
    return found


def browse(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True,
        text=True,
        timeout=90,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_status_page_renders_in_chromium(
    tmp_path: Path, sqlite_url: str, watchdogctl: str
) -> None:
    browser = chromium()  # fail at once, naming the package, when it is missing
    app = AppTable(sqlite_url)
    app.create()
    for n in range(9):
        app.add(f"wa-{n:02d}", heartbeat_ago=1, process="app")
    app.add("frozen", heartbeat_ago=300, process="app")
    port = free_port()
    config = tmp_path / "watchdog.toml"
    config.write_text(f"""
[database]
url = "{sqlite_url}"
[detection]
interval = 0.5
grace = 0
[escalation]
ladder = [ {{ action = "db_flag" }} ]
[health]
enabled = true
port = {port}
""")
    log = tmp_path / "daemon.log"
    daemon = start_daemon(watchdogctl, config, log, watchdog_env("unused"))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(base), 30, "the daemon's first good cycle")
        wait_for(lambda: 'data-instance="frozen"' in _get(base + "/"), 30, "frozen's incident")
        profile = tmp_path / "profile"
        dom = browse(base + "/", profile, "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        html = dom.stdout
        # What the browser built: the fleet numbers, who acts, frozen's row with its ladder.
        assert re.search(r'id="fleet-monitored"[^>]*>10<', html), html[:3000]
        assert re.search(r'id="fleet-healthy"[^>]*>9<', html)
        assert re.search(r'id="fleet-unhealthy"[^>]*>1<', html)
        assert re.search(r'id="acting-line" class="good">[^<]*leads', html)
        row = re.search(r'<tr data-instance="frozen">(.*?)</tr>', html, re.S)
        assert row is not None
        assert 'href="/instances/frozen"' in row.group(1)
        assert 'class="rung done db_flag"' in row.group(1)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for name, path in (("status-page.png", "/"), ("instance-page.png", "/instances/frozen")):
            shot = ARTIFACTS / name
            shot.unlink(missing_ok=True)
            taken = browse(base + path, profile, f"--screenshot={shot}", "--window-size=1280,900")
            assert taken.returncode == 0, taken.stderr[-2000:]
            assert shot.stat().st_size > 10_000  # a real picture, not an empty page
        instance = browse(base + "/instances/frozen", profile, "--dump-dom").stdout
        assert re.search(r'id="verdict"[^>]*>unhealthy<', instance)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{log.read_text()[-3000:]}") from None
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=40) == 0
        app.dispose()
    del browser


def _get(url: str) -> str:
    try:
        return httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return ""


def _ready(base: str) -> bool:
    try:
        return httpx.get(base + "/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
