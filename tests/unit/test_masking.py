"""One masking function for every URL the watchdog shows, right for passwords that hold
`/`, `@`, `:` or percent-encoding, in every place a URL is printed, logged or audited."""

from __future__ import annotations

import pytest

from watchdog.actions.supervisor import SupervisorRestart
from watchdog.config import load_settings, redacted
from watchdog.core.errors import ConfigError
from watchdog.daemon.selfcheck import readiness
from watchdog.masking import mask_url, mask_urls_in, mask_webhook, without_userinfo

PASSWORDS = ["hunter2", "pa/ss", "p@ss", "pa:ss", "p%40ss%2Fw", "a/b@c:d", "@@//::"]
UNREADABLE = {"a/b@c:d"}  # SQLAlchemy's URL parser cannot tell its parts apart


@pytest.mark.parametrize("password", PASSWORDS)
def test_the_whole_password_is_masked(password: str) -> None:
    url = f"postgresql+psycopg://wd:{password}@db.internal:5432/app?sslmode=require"
    assert mask_url(url) == "postgresql+psycopg://wd:***@db.internal:5432/app?sslmode=require"
    text = f"database unreachable ({url}): timeout; check it"
    masked = mask_urls_in(text)
    assert password not in masked.replace("wd:***@", "")
    shown = "postgresql+psycopg://wd:***@db.internal:5432/app?sslmode=require"
    assert masked == f"database unreachable ({shown}): timeout; check it"


def test_urls_without_a_password_are_left_alone() -> None:
    for url in (
        "sqlite:///watchdog.db",
        "sqlite:////var/lib/app/app.db",
        "unix:///run/supervisor.sock",
        "postgresql://u@h/db",
        "http://127.0.0.1:3000/api/instances/{id}/restart",
        "https://hooks.example/x?mail=a@b",
    ):
        assert mask_url(url) == url


def test_webhooks_keep_scheme_and_host_only() -> None:
    assert mask_webhook("https://hooks.slack.com/services/T0/B0/secret") == (
        "https://hooks.slack.com/***"
    )
    assert mask_webhook("https://u:p/w@am.example:9093/") == "https://u:***@am.example:9093/"
    text = "POST https://hooks.slack.com/services/T0/B0/secret failed"
    assert mask_urls_in(text, webhook=True) == "POST https://hooks.slack.com/*** failed"


@pytest.mark.parametrize("password", PASSWORDS)
def test_every_place_that_shows_a_url_masks_it(password: str) -> None:
    env = {
        "WATCHDOG_DATABASE__URL": f"postgresql+psycopg://wd:{password}@db/app",
        "WATCHDOG_PROCESS__SUPERVISOR_URL": f"http://admin:{password}@127.0.0.1:9001",
    }
    if password in UNREADABLE:  # a URL SQLAlchemy cannot read is refused, masked too
        with pytest.raises(ConfigError, match=r"^config error: database.url: cannot be read"):
            load_settings(None, env)
        with pytest.raises(ConfigError) as refused:
            load_settings(None, env)
        assert password not in str(refused.value)
        return
    shown = repr(redacted(load_settings(None, env), env))
    assert f":{password}@" not in shown
    assert "wd:***@db/app" in shown
    ready, why = readiness(False, None, 60.0, f"connect to {env['WATCHDOG_DATABASE__URL']}")
    assert not ready
    assert "wd:***@db/app" in why
    assert without_userinfo(env["WATCHDOG_PROCESS__SUPERVISOR_URL"]) == "http://127.0.0.1:9001"


def test_a_supervisor_url_names_no_credentials() -> None:
    restart = SupervisorRestart("http://admin:s3cret@127.0.0.1:9001", "app")
    assert restart.server == "http://127.0.0.1:9001"
