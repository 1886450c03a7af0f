"""The daemon's own memory watch: thresholds, hysteresis and one log line per change."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
from structlog.testing import capture_logs

from watchdog.daemon.selfcheck import MIB, MemoryLevel, MemoryWatch, process_rss

LIMIT = 1000  # bytes: percentages read straight off the readings


class Reader:
    """An injected RSS reader that returns whatever the test last set."""

    def __init__(self, value: int = 0) -> None:
        self.value = value
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.value


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every test's log events, kept off whatever structlog configuration is current."""
    with capture_logs() as captured:
        yield captured


def watch_at(reader: Reader, **kwargs: float) -> MemoryWatch:
    return MemoryWatch(LIMIT, reader, **kwargs)


def levels(watch: MemoryWatch, reader: Reader, readings: list[int]) -> Iterator[MemoryLevel]:
    for value in readings:
        reader.value = value
        yield watch.check()


@pytest.mark.parametrize(
    ("rss", "expected"),
    [
        (0, MemoryLevel.OK),
        (799, MemoryLevel.OK),
        (800, MemoryLevel.WARNING),
        (949, MemoryLevel.WARNING),
        (950, MemoryLevel.CRITICAL),
        (5000, MemoryLevel.CRITICAL),
    ],
)
def test_level_thresholds_from_a_fresh_watch(rss: int, expected: MemoryLevel) -> None:
    reader = Reader(rss)
    watch = watch_at(reader)
    assert watch.check() is expected
    assert watch.level is expected
    assert watch.rss == rss
    assert reader.reads == 1


def test_before_the_first_check() -> None:
    reader = Reader(900)
    watch = watch_at(reader)
    assert watch.level is MemoryLevel.OK
    assert watch.rss == 0
    assert reader.reads == 0  # nothing is read until asked


def test_levels_are_strings_for_logs_and_metrics() -> None:
    assert [str(level) for level in MemoryLevel] == ["ok", "warning", "critical"]


def test_levels_follow_the_readings_up_and_down() -> None:
    reader = Reader()
    watch = watch_at(reader, hysteresis=0.0)
    readings = [100, 800, 960, 900, 700, 950, 10]
    assert list(levels(watch, reader, readings)) == [
        MemoryLevel.OK,
        MemoryLevel.WARNING,
        MemoryLevel.CRITICAL,
        MemoryLevel.WARNING,
        MemoryLevel.OK,
        MemoryLevel.CRITICAL,
        MemoryLevel.OK,
    ]


def test_hysteresis_keeps_a_level_until_the_reading_falls_clearly_below_it() -> None:
    reader = Reader()
    watch = watch_at(reader)  # default: 2 % of the limit
    readings = [800, 790, 781, 779, 790, 950, 935, 929, 700]
    assert list(levels(watch, reader, readings)) == [
        MemoryLevel.WARNING,
        MemoryLevel.WARNING,  # 79 %: still within the slack
        MemoryLevel.WARNING,
        MemoryLevel.OK,  # below 78 %
        MemoryLevel.OK,  # 79 % from below is not yet a warning
        MemoryLevel.CRITICAL,
        MemoryLevel.CRITICAL,  # 93.5 %
        MemoryLevel.WARNING,  # below 93 %
        MemoryLevel.OK,
    ]


def test_custom_fractions() -> None:
    reader = Reader()
    watch = watch_at(reader, warning=0.5, critical=0.6, hysteresis=0.0)
    assert list(levels(watch, reader, [499, 500, 600])) == [
        MemoryLevel.OK,
        MemoryLevel.WARNING,
        MemoryLevel.CRITICAL,
    ]


@pytest.mark.parametrize(
    ("limit", "kwargs"),
    [
        (0, {}),
        (-1, {}),
        (LIMIT, {"warning": 0.9, "critical": 0.8}),
        (LIMIT, {"warning": 0.0}),
        (LIMIT, {"hysteresis": -0.1}),
        (LIMIT, {"hysteresis": 0.9}),
    ],
)
def test_rejects_nonsense_settings(limit: int, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        MemoryWatch(limit, Reader(), **kwargs)


# ------------------------------------------------------------------------- logging


def test_logs_once_per_transition_not_every_check(logs: list[MutableMapping[str, Any]]) -> None:
    reader = Reader()
    watch = watch_at(reader, hysteresis=0.0)
    readings = [100, 200, 850, 860, 870, 960, 990, 900, 880, 100, 50, 50]
    list(levels(watch, reader, readings))
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("memory_warning", "warning"),
        ("memory_critical", "error"),
        ("memory_warning", "warning"),
        ("memory_ok_again", "info"),
    ]
    assert reader.reads == len(readings)


def test_log_fields_describe_the_reading(logs: list[MutableMapping[str, Any]]) -> None:
    reader = Reader(205 * MIB)
    watch = MemoryWatch.from_megabytes(256, reader)
    assert watch.limit_bytes == 256 * MIB
    assert watch.check() is MemoryLevel.WARNING
    assert logs == [
        {
            "event": "memory_warning",
            "log_level": "warning",
            "component": "memory",
            "rss_mb": 205.0,
            "limit_mb": 256.0,
            "percent": 80.1,
        }
    ]


def test_a_healthy_start_logs_nothing(logs: list[MutableMapping[str, Any]]) -> None:
    reader = Reader(10)
    watch = watch_at(reader)
    for _ in range(5):
        watch.check()
    assert logs == []


def test_hovering_on_a_threshold_logs_once(logs: list[MutableMapping[str, Any]]) -> None:
    reader = Reader()
    watch = watch_at(reader)
    list(levels(watch, reader, [801, 799, 801, 799, 801, 799]))
    assert [e["event"] for e in logs] == ["memory_warning"]


def test_the_default_reader_reads_this_process() -> None:
    rss = process_rss()
    assert 1 * MIB < rss < 16 * 1024 * MIB
    watch = MemoryWatch(1024 * 1024 * MIB)  # far above anything real
    assert watch.check() is MemoryLevel.OK
    assert watch.rss > 1 * MIB
