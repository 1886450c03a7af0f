"""The pure modules import only the standard library and each other: no I/O library, no
clock of their own, so every rule in them is testable in microseconds."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import watchdog

PURE = ("errors", "model", "policy", "safety", "situation")
ROOT = Path(watchdog.__file__).parent


def imported(module: str) -> set[str]:
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", PURE)
def test_a_pure_module_imports_only_the_standard_library_and_pure_modules(module: str) -> None:
    allowed = {f"watchdog.{m}" for m in PURE}
    for name in imported(module):
        top = name.split(".")[0]
        assert name in allowed or (top != "watchdog" and top in sys.stdlib_module_names), (
            f"watchdog.{module} imports {name}"
        )
