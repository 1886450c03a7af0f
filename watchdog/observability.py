"""Logging: one pipeline, one JSON event per line, and every audit row as an event too."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO, cast

import structlog

from watchdog.core.model import AuditRow

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_SILENT = logging.CRITICAL + 10


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Every log line as one JSON object on `stream` (stdout by default), timestamps in
    UTC ISO-8601: the project's structlog events and the standard library's records (the
    pure core, the scheduler, the drivers) get the same fields and the same renderer.
    JSON escapes control characters, so a value from the application's table can never
    forge a line. The project's own events (two per recovery call in a storm) are
    rendered straight to the stream; only the library's records take the standard
    library's handler, through structlog's `ProcessorFormatter`."""
    threshold = _LEVELS.get(level, _SILENT)
    out = stream or _STDOUT
    stamped: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    timestamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    rendered: list[structlog.typing.Processor] = [
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(sort_keys=False),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*stamped, structlog.stdlib.add_logger_name, timestamp],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendered],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]  # configured again (a test, a second command): replaced
    root.setLevel(threshold)
    # httpx logs full URLs at INFO, and webhook URLs are credentials; the others would
    # write a line per cycle or per migration step.
    for noisy in ("apscheduler", "alembic", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(threshold, logging.WARNING))
    silent = threshold > logging.CRITICAL
    structlog.configure(
        processors=[*stamped, _own_logger, timestamp, *rendered],
        wrapper_class=structlog.make_filtering_bound_logger(min(threshold, logging.CRITICAL)),
        logger_factory=(
            structlog.ReturnLoggerFactory() if silent else structlog.PrintLoggerFactory(out)
        ),
        cache_logger_on_first_use=False,
    )


class _Stdout:
    """Whatever `sys.stdout` is when a line is written (a test's capture, a redirect)."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


_STDOUT = cast(TextIO, _Stdout())


def _own_logger(
    _logger: object, _method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    event["logger"] = "watchdog"  # as `add_logger_name` names the library's records
    return event


def silence_logging() -> None:
    """No log lines at all: an operator command prints its own human text (`--verbose`
    turns the lines back on)."""
    configure_logging("silent", sys.stderr)


def get_logger(**context: Any) -> structlog.typing.FilteringBoundLogger:
    # Initial values stay lazy: a module-level logger picks up configure_logging() later.
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger("watchdog", **context)
    return logger


# One proxy for every audit event (it still follows a later configure_logging()): a
# recovery storm logs two events per call, and building a logger each time showed.
_audit_log = get_logger()


def emit_audit(row: AuditRow) -> None:
    """The structlog twin of an audit row, for humans and log shippers."""
    fields = row.as_json()
    fields["audit_id"] = fields.pop("id")
    fields.pop("at")
    if row.outcome == "failed":
        _audit_log.warning("audit", **fields)
    else:
        _audit_log.info("audit", **fields)
