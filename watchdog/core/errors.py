"""One exception tree for the whole watchdog.

Adapters translate driver and library errors into these at the edge, so the engine
and the retry policies only ever see our own types::

    WatchdogError                 base; `transient` says whether a retry may help
    ├── ConfigError               bad configuration (exit 2); permanent
    ├── StoreError                the database could not be read or written
    │   ├── StoreUnavailable      connection lost, busy; transient
    │   │   └── StoreTimeout      no answer within the statement timeout
    │   └── StoreSchemaError      table or column missing; permanent
    ├── RecoveryError             a recovery action did not achieve its goal
    │   ├── TransientRecoveryError   refused, reset, 502/503/504, timed out
    │   └── PermanentRecoveryError   other 4xx, unknown program or unit
    │       └── InvalidTarget        an unsafe id or name, no process, the row gone:
    │                                nothing was asked of the backend
    └── NotFound                  an operator named an instance the watchdog does not know
"""

from __future__ import annotations

import os
import ssl


class WatchdogError(Exception):
    """Base of every error the watchdog raises on purpose."""

    transient: bool = False


class ConfigError(WatchdogError):
    """The configuration is invalid; the message names the key and the fix."""


class StoreError(WatchdogError):
    """The database could not be read or written."""


class StoreUnavailable(StoreError):
    """The database is unreachable, busy or slow: try again later."""

    transient = True


class StoreTimeout(StoreUnavailable):
    """The database did not answer within its timeout (the whole bound is spent)."""


class StoreSchemaError(StoreError):
    """The database lacks a table or column the configuration names."""


class RecoveryError(WatchdogError):
    """A recovery action failed."""


class TransientRecoveryError(RecoveryError):
    """A recovery action failed in a way a retry may fix."""

    transient = True


class PermanentRecoveryError(RecoveryError):
    """A recovery action failed in a way no retry will fix."""


class InvalidTarget(PermanentRecoveryError):
    """The target cannot be acted on by this backend (an unsafe id or name, no process to
    restart, its row gone). It says nothing about the backend's health, so it never
    counts against the backend's circuit breaker: one hostile row cannot switch a rung
    off for the whole fleet."""


class NotFound(WatchdogError):
    """An operator named something the watchdog does not know."""


# ------------------------------------------------------------------ error text, once


def squeeze(text: str) -> str:
    """`text` with its white space folded onto one line."""
    return " ".join(text.split())


def describe(exc: BaseException) -> str:
    """An exception on one line, its class first: "ConnectError: Connection refused". A
    wrapped OS error speaks for it (httpx only says "All connection attempts failed"),
    except a TLS one, whose errno would read "Operation not permitted" for a bad certificate."""
    cause: BaseException | None = exc
    for _ in range(10):  # chains are short; the bound guards against cycles
        if cause is None:
            break
        # An SSL error's errno is OpenSSL's code, not the system's: its text says more.
        if isinstance(cause, OSError) and cause.errno and not isinstance(cause, ssl.SSLError):
            return f"{type(exc).__name__}: {os.strerror(cause.errno)}"
        cause = cause.__cause__ or cause.__context__
    text = squeeze(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
