"""The safe-name rule and the template helpers shared by the process backends."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watchdog.actions.naming import (
    SAFE_NAME_PATTERN,
    check_placeholders,
    check_safe_name,
    placeholders,
    resolve_process,
    substitute,
)
from watchdog.core.errors import PermanentRecoveryError
from watchdog.core.model import Target

UNSAFE = [
    "",
    "a b",
    "../x",
    "a/b",
    "$(rm)",
    "`id`",
    "x;y",
    "a|b",
    "a&&b",
    "-rf",
    "--help",
    ".hidden",
    "_x",
    "a\n",
    "a\nb",
    "tab\there",
    "quote'",
    'dq"',
    "{id}",
    "caf\u00e9",
    "x" * 129,
]


@pytest.mark.parametrize(
    "name", ["w", "worker-1", "app:worker_00", "svc@1.service", "A.b-C_d:e@f", "9" * 128]
)
def test_safe_names_pass_unchanged(name: str) -> None:
    assert check_safe_name("instance id", name) == name


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_names_are_rejected_naming_value_and_rule(name: str) -> None:
    with pytest.raises(PermanentRecoveryError) as info:
        check_safe_name("instance id", name)
    message = str(info.value)
    assert f"unsafe instance id {name!r}" in message
    assert SAFE_NAME_PATTERN in message
    assert "\n" not in message
    assert info.value.transient is False


@given(st.text(alphabet=string.printable + "\u00e9\u202e\x00", max_size=140))
def test_anything_accepted_is_inert_for_a_program(value: str) -> None:
    try:
        check_safe_name("process name", value)
    except PermanentRecoveryError:
        return
    assert 1 <= len(value) <= 128
    assert value[0] not in "-."
    assert not set(value) & set(" \t\n\r/\\$`;|&<>(){}[]*?!'\"~#%=,\x00")


def test_resolve_process_prefers_the_targets_own_process() -> None:
    assert resolve_process("worker-{id}", Target("7", "shared-pool")) == "shared-pool"


@pytest.mark.parametrize("process", [None, ""])
def test_resolve_process_falls_back_to_the_template(process: str | None) -> None:
    assert resolve_process("worker-{id}", Target("7", process)) == "worker-7"
    assert resolve_process("fixed", Target("7", process)) == "fixed"


def test_resolve_process_checks_the_id_even_when_process_is_known() -> None:
    with pytest.raises(PermanentRecoveryError, match=r"unsafe instance id '\.\./x'"):
        resolve_process("worker-{id}", Target("../x", "fine"))


@pytest.mark.parametrize(
    ("template", "process"), [("w-{id}", "bad name"), ("w-{id}", "-rf"), ("/bin/{id}", None)]
)
def test_resolve_process_checks_the_resulting_name(template: str, process: str | None) -> None:
    with pytest.raises(PermanentRecoveryError, match="unsafe process name"):
        resolve_process(template, Target("7", process))


def test_placeholders_finds_every_braced_name() -> None:
    assert placeholders("{process} {id} {ID} {} {0} {id!r}") == {
        "{process}",
        "{id}",
        "{ID}",
        "{}",
        "{0}",
        "{id!r}",
    }
    assert placeholders("no braces") == set()


def test_check_placeholders_names_the_unknown_ones() -> None:
    assert check_placeholders("arg", "x-{id}", ["{id}"]) == "x-{id}"
    with pytest.raises(ValueError, match=r"unknown placeholder\(s\) \{cmd\}, \{pid\}"):
        check_placeholders("arg", "{cmd} {pid} {id}", ["{id}"])


def test_substitute_never_expands_a_substituted_value() -> None:
    values = {"{process}": "{id}", "{id}": "7"}
    assert substitute("{process}/{id}", values) == "{id}/7"
    assert substitute("plain", {}) == "plain"
