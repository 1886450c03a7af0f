"""The pure core (`watchdog/core/`) imports only the standard library and itself: no I/O
library, no clock of its own, so every rule in it is testable in microseconds."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import watchdog

CORE = Path(watchdog.__file__).parent / "core"
PURE = sorted(p.stem for p in CORE.glob("*.py") if p.stem != "__init__")


def test_the_core_holds_the_model_the_rules_and_the_ports() -> None:
    assert {"breaker", "errors", "model", "policy", "ports", "safety", "situation"} <= set(PURE)


def imported(module: str) -> set[str]:
    tree = ast.parse((CORE / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", PURE)
def test_a_pure_module_imports_only_the_standard_library_and_pure_modules(module: str) -> None:
    allowed = {f"watchdog.core.{m}" for m in PURE}
    for name in imported(module):
        top = name.split(".")[0]
        assert name in allowed or (top != "watchdog" and top in sys.stdlib_module_names), (
            f"watchdog.core.{module} imports {name}"
        )
