"""Safe names and templates shared by the process backends (command, supervisord, systemd).

Instance ids and process names come from the application's database, so they are untrusted:
before one is put into an argv, a unit name or a URL it must pass `check_safe_name`. The
pattern rules out whitespace, shell metacharacters, path separators and a leading `-` or `.`
(which a program could read as an option or a relative path).
"""

from __future__ import annotations

import re
from collections.abc import Collection

from watchdog.core.errors import InvalidTarget
from watchdog.core.model import Target

SAFE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
SAFE_NAME_RULE = (
    f"must match {SAFE_NAME_PATTERN} (1-128 letters, digits or . _ : @ -, "
    "starting with a letter or digit)"
)
_SAFE_NAME = re.compile(SAFE_NAME_PATTERN)

# Anything between braces counts as a placeholder, so typos such as `{ID}` are caught.
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def check_safe_name(kind: str, value: str) -> str:
    """Return `value` when it is safe to pass to a program; otherwise raise.

    `kind` names what the value is ("instance id", "process name") for the message.
    """
    # fullmatch, because `$` alone would accept a trailing newline.
    if _SAFE_NAME.fullmatch(value) is None:
        raise InvalidTarget(f"unsafe {kind} {value!r}: {SAFE_NAME_RULE}")
    return value


def placeholders(template: str) -> set[str]:
    """The `{...}` placeholders a template uses, braces included."""
    return {f"{{{name}}}" for name in _PLACEHOLDER.findall(template)}


def check_placeholders(what: str, template: str, allowed: Collection[str]) -> str:
    """Raise ValueError naming any placeholder of `template` outside `allowed` (e.g. "{id}")."""
    unknown = placeholders(template) - set(allowed)
    if unknown:
        raise ValueError(
            f"{what} {template!r} has unknown placeholder(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    return template


def substitute(template: str, values: dict[str, str]) -> str:
    """Replace each `{name}` of `values` in one pass, so a value is never re-expanded."""
    if not values:
        return template
    pattern = re.compile("|".join(re.escape(name) for name in values))
    return pattern.sub(lambda match: values[match.group(0)], template)


def resolve_process(template: str, target: Target) -> str:
    """The process hosting `target`: its own `process` when known, else `template` with
    `{id}` replaced by the instance id. Both the id and the result must be safe names."""
    instance_id = check_safe_name("instance id", target.instance_id)
    name = target.process or substitute(template, {"{id}": instance_id})
    return check_safe_name("process name", name)
