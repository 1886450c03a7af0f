"""Secrets out of everything the watchdog shows: one masking function for URLs (database,
supervisor, alert sinks, the API, the health endpoint's answers), used everywhere a URL
or a text that may hold one is printed, logged or audited.

A password is everything between the user's `:` and the last `@` before the host, so a
password holding `/`, `:`, `@` or percent-encoding is masked whole, as written (the
database drivers read it the same way). A URL that cannot be told apart is masked more,
never less.
"""

from __future__ import annotations

import re

MASK = "***"

_SCHEME = r"[a-z][a-z0-9+.-]*://"
# scheme://userinfo@rest, the userinfo ending at the last @ before the next space
_WITH_USERINFO = re.compile(rf"^({_SCHEME})([^\s]*)@([^@\s]*)$", re.IGNORECASE)
_URLS = re.compile(rf"{_SCHEME}[^\s'\"<>]+", re.IGNORECASE)


def mask_url(url: str) -> str:
    """`url` with the password of its userinfo masked: `postgresql://wd:***@db/app`."""
    found = _WITH_USERINFO.match(url)
    if found is None:
        return url
    scheme, userinfo, rest = found.groups()
    user, colon, _password = userinfo.partition(":")
    if not colon:
        return url  # a user name alone is no secret
    return f"{scheme}{user}:{MASK}@{rest}"


def mask_webhook(url: str) -> str:
    """Scheme and host of a webhook URL only: its path and query are often the secret."""
    parts = mask_url(url).split("/", 3)
    return "/".join(parts[:3]) + f"/{MASK}" if len(parts) > 3 and parts[3] else "/".join(parts)


def mask_urls_in(text: str, *, webhook: bool = False) -> str:
    """Every URL in `text` masked (`webhook`: down to scheme and host)."""
    mask = mask_webhook if webhook else mask_url
    return _URLS.sub(lambda found: mask(found.group(0)), text)


def without_userinfo(url: str) -> str:
    """`url` with its user and password left out entirely: `http://127.0.0.1:9001`."""
    found = _WITH_USERINFO.match(url)
    return url if found is None else f"{found.group(1)}{found.group(3)}"


_HEADER_SAFE = re.compile(r"[!-~]+")  # visible ASCII: anything else cannot go in a header


def check_token(token: str, variable: str) -> None:
    """A bearer token goes into an HTTP header: visible ASCII only, so it can neither
    break the request nor smuggle a header in. ValueError otherwise, never echoing it."""
    if _HEADER_SAFE.fullmatch(token) is None:
        raise ValueError(
            f"the token in {variable} must be visible ASCII without spaces or line breaks"
        )
