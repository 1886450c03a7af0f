"""Retention settings, how long each kind of row is kept, and the leader's schedule.

The schedule is driven by an injected clock and called by hand, as APScheduler would:
nothing here waits an hour.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from watchdog.config import RetentionSettings, load_settings
from watchdog.core.errors import ConfigError, StoreUnavailable
from watchdog.daemon.jobs import RETENTION_CHECK, RETENTION_EVERY, retention_job
from watchdog.daemon.loop import SideJob
from watchdog.store.retention import Keep

# ------------------------------------------------------------------------- settings


def test_defaults_keep_audit_and_incidents_90_days_and_alerts_7() -> None:
    retention = load_settings(None, {}).retention
    assert retention == RetentionSettings(audit_days=90, incidents_days=90, outbox_days=7)


def test_settings_come_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "watchdog.toml"
    path.write_text("[retention]\naudit_days = 365\nincidents_days = 0\n")
    env = {"WATCHDOG_RETENTION__OUTBOX_DAYS": "2"}
    retention = load_settings(path, env).retention
    assert (retention.audit_days, retention.incidents_days, retention.outbox_days) == (365, 0, 2)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", "greater than or equal to 0"),
        ("3653", "less than or equal to 3652"),  # over ten years
        ("1.5", "valid integer"),
        ("true", "valid integer"),  # not a number of days
        ('"ninety"', "valid integer"),
    ],
)
def test_absurd_values_are_refused_in_one_line(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(None, {"WATCHDOG_RETENTION__AUDIT_DAYS": value})
    text = str(raised.value)
    assert text.startswith("config error: retention.audit_days: ")
    assert message in text
    assert "fix it in WATCHDOG_RETENTION__AUDIT_DAYS" in text
    assert "\n" not in text


def test_an_unknown_key_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"retention\.audit: unknown key"):
        load_settings(None, {"WATCHDOG_RETENTION__AUDIT": "30"})


# ----------------------------------------------------------------------------- keep


def test_zero_keeps_forever() -> None:
    keep = Keep.days(0, 0, 0)
    assert (keep.audit, keep.incidents, keep.outbox, keep.forever) == (None, None, None, True)


def test_days_become_ages() -> None:
    keep = Keep.days(90, 30, 7)
    assert (keep.audit, keep.incidents, keep.outbox) == (
        timedelta(days=90),
        timedelta(days=30),
        timedelta(days=7),
    )
    assert not keep.forever


def test_incidents_are_kept_at_least_as_long_as_the_rules_read_them() -> None:
    assert Keep.days(90, 1, 7, incidents_floor=3 * 86400).incidents == timedelta(days=3)
    assert Keep.days(90, 5, 7, incidents_floor=3600).incidents == timedelta(days=5)
    assert Keep.days(90, 0, 7, incidents_floor=3600).incidents is None  # forever stays forever


# ------------------------------------------------------------------------- schedule


class Schedule:
    """What the job sees: a lead that comes and goes, a clock, and the runs it starts."""

    def __init__(self) -> None:
        self.leading = True
        self.clock = 1000.0
        self.runs = 0
        self.fail: Exception | None = None

    async def prune(self) -> None:
        self.runs += 1
        if self.fail is not None:
            raise self.fail


def schedule_job(schedule: Schedule, every: float = 3600.0) -> SideJob:
    return retention_job(
        schedule.prune, lambda: schedule.leading, every=every, monotonic=lambda: schedule.clock
    )


def test_the_job_checks_each_minute_and_runs_hourly() -> None:
    assert (RETENTION_CHECK, RETENTION_EVERY) == (60.0, 3600.0)
    job = retention_job(Schedule().prune, lambda: True)
    assert (job.name, job.every) == ("retention", RETENTION_CHECK)


async def test_the_leader_runs_at_its_first_check_then_once_a_period() -> None:
    schedule = Schedule()
    job = schedule_job(schedule)
    await job.guarded()
    assert schedule.runs == 1  # soon after taking the lead

    schedule.clock += 3599.0
    await job.guarded()
    assert schedule.runs == 1
    schedule.clock += 1.0
    await job.guarded()
    assert schedule.runs == 2


async def test_a_standby_never_runs_and_a_new_lead_runs_at_once() -> None:
    schedule = Schedule()
    schedule.leading = False
    job = schedule_job(schedule)
    await job.guarded()
    assert schedule.runs == 0

    schedule.leading = True
    await job.guarded()
    assert schedule.runs == 1
    schedule.leading = False  # lost the lead a minute later ...
    schedule.clock += 60.0
    await job.guarded()
    schedule.leading = True  # ... and won it back: a new lead runs again at once
    schedule.clock += 60.0
    await job.guarded()
    assert schedule.runs == 2


async def test_a_failed_run_is_logged_and_tried_again_next_period() -> None:
    schedule = Schedule()
    schedule.fail = StoreUnavailable("database unavailable (delete old audit rows): gone")
    job = schedule_job(schedule)
    await job.guarded()  # logged by the side job, never raised into the daemon
    schedule.fail = None
    schedule.clock += 60.0
    await job.guarded()
    assert schedule.runs == 1
    schedule.clock += 3600.0
    await job.guarded()
    assert schedule.runs == 2
