"""Alerts derived from the append-only audit trail, through a transactional outbox.

`AlertFeeder.feed` enqueues one outbox row per sink for every alert-worthy audit row
(exactly once, even with several replicas); `AlertSender.send_due` claims due rows and
delivers them over HTTP with retries and backoff. `formats` builds the bodies.
"""

from __future__ import annotations

from watchdog.alerts.sender import AlertFeeder, AlertSender, SendReport
from watchdog.store.outbox import SqlOutbox

__all__ = ["AlertFeeder", "AlertSender", "SendReport", "SqlOutbox"]
