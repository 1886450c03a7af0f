"""What the end-to-end tests share: running the installed `watchdogctl` against a config."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path


def watchdog_env(token: str) -> dict[str, str]:
    """This process's environment with `token` as the watchdog's API token."""
    return {**os.environ, "WATCHDOG_API_TOKEN": token}


def start_daemon(
    watchdogctl: str, config: Path, log_path: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """`watchdogctl --config CONFIG run` in the background, stdout and stderr to `log_path`."""
    with log_path.open("w") as log:
        return subprocess.Popen(
            [watchdogctl, "--config", str(config), "run"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def ctl(watchdogctl: str, config: Path, *args: str, token: str) -> subprocess.CompletedProcess[str]:
    """Run `watchdogctl --config CONFIG ARGS...` to its exit, capturing its output as text."""
    return subprocess.run(
        [watchdogctl, "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=watchdog_env(token),
    )


def audit(
    watchdogctl: str, config: Path, *, token: str, instance_id: str | None = None
) -> list[dict[str, object]]:
    """The audit trail (up to 1,000 rows), of one instance when `instance_id` is given."""
    instance = ["--instance", instance_id] if instance_id is not None else []
    result = ctl(watchdogctl, config, "audit", "--json", *instance, "--limit", "1000", token=token)
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows
