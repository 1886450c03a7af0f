"""Structured logging: one JSON event per line, and every audit row as an event too."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from watchdog.model import AuditRow

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """JSON lines on `stream` (stdout by default), timestamps in UTC ISO-8601."""
    # The standard library's loggers (the pure core, libraries) go to stderr.
    logging.basicConfig(
        level=max(_LEVELS[level], logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
            handler.setFormatter(OneLineFormatter(handler.formatter))
    # httpx logs full URLs at INFO, and webhook URLs are credentials.
    for noisy in (
        "apscheduler",
        "alembic",
        "httpx",
        "httpcore",
    ):  # not a line per cycle or migration step
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=False,
    )


def one_line(text: str) -> str:
    """`text` with line breaks and other control characters escaped: an instance id or a
    process name from the application's table can never forge a line of ours."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class OneLineFormatter(logging.Formatter):
    """The standard library's log lines, with the message kept to one line (a traceback
    still follows it on lines of its own)."""

    def __init__(self, base: logging.Formatter | None) -> None:
        super().__init__(base._fmt if base else None, base.datefmt if base else None)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)


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
