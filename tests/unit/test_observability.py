"""One logging pipeline: structlog events and the standard library's records as JSON lines
on one stream; audit rows as events, failed outcomes at warning, the rest at info."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from watchdog import render
from watchdog.core.model import AuditAction, AuditRow, Outcome
from watchdog.observability import configure_logging, emit_audit, get_logger, silence_logging


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging("info", out)  # configured after the module's logger was made
    try:
        yield out
    finally:
        configure_logging("info")


def row(outcome: Outcome) -> AuditRow:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return AuditRow(7, at, "wa-1", AuditAction.API_RESTART, outcome, 3, "stale_heartbeat", 1)


def test_audit_events_follow_the_configured_stream_and_levels(stream: io.StringIO) -> None:
    emit_audit(row(Outcome.OK))
    emit_audit(row(Outcome.FAILED))
    ok, failed = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (ok["event"], ok["level"], ok["audit_id"], ok["instance"]) == (
        "audit",
        "info",
        7,
        "wa-1",
    )
    assert (failed["level"], failed["outcome"]) == ("warning", "failed")
    assert "at" not in ok  # the event's own timestamp stands for it


def test_standard_library_records_are_json_lines_on_the_same_stream(stream: io.StringIO) -> None:
    logging.getLogger("watchdog.engine.cycle").warning(
        "restart of %s failed", "app\nERROR forged\x1b[2J"
    )
    get_logger(component="daemon").info("cycle", unhealthy=2)
    logging.getLogger("watchdog.engine.cycle").debug("below the level")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("watchdog.engine.cycle").exception("cycle_failed")

    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # one line each: the traceback rides inside its event
    stdlib, native, failed = (json.loads(line) for line in lines)
    assert stdlib["event"] == "restart of app\nERROR forged\x1b[2J failed"  # escaped by JSON
    assert (stdlib["level"], stdlib["logger"]) == ("warning", "watchdog.engine.cycle")
    assert stdlib["timestamp"].endswith("Z")
    assert (native["event"], native["component"], native["unhealthy"]) == ("cycle", "daemon", 2)
    assert failed["level"] == "error"
    assert "RuntimeError: boom" in failed["exception"]


def test_silenced_logging_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    silence_logging()
    try:
        logging.getLogger("watchdog.daemon.leadership").critical("not shown")
        get_logger().critical("not shown either")
        emit_audit(row(Outcome.FAILED))
    finally:
        configure_logging("info")
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "")


def test_a_hostile_value_is_shown_escaped_and_cut_in_a_cli_table() -> None:
    text = render.table(
        ("INSTANCE", "STATE"), [("\x1b[2Jwipe\nforged", "open"), ("x" * 3000, "open")]
    )
    lines = text.splitlines()
    assert len(lines) == 3
    assert "\x1b" not in text
    assert lines[1].startswith("\\x1b[2Jwipe\\nforged")
    assert max(len(line) for line in lines) < 100
    assert lines[2].split()[0].endswith("…")


def test_a_table_fits_the_terminal_by_narrowing_its_widest_columns() -> None:
    rows = [("wa-" + "x" * 60, "open", "stale_heartbeat", "held: grace until 12:00:31Z")]
    text = render.table(("INSTANCE", "STATE", "REASON", "WHEN"), rows, width=60)
    assert max(len(line) for line in text.splitlines()) <= 60
    assert text.splitlines()[1].split()[0].endswith("…")
    assert "open" in text
