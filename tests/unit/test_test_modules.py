"""Test modules share helpers through tests/helpers.py, not by importing one another."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import collector_held_off

TESTS = Path(__file__).resolve().parents[1]


def parsed(source: str) -> ast.Module:
    """`ast.parse` with the garbage collector held off while the tree is built.

    Python 3.11 keeps the tree builder's depth count in interpreter state. A collection during the
    build may run a finalizer that parses too (an asyncio task's never-retrieved exception is
    logged with a traceback whose carets come from `ast`), and the outer parse then fails with
    "AST constructor recursion depth mismatch" (a CI run, December 2026).
    """
    with collector_held_off():
        return ast.parse(source)


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(parsed(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_test_module_imports_another() -> None:
    """No file under tests/ imports a test_*.py module (helpers live in tests/helpers.py)."""
    offenders = {
        f"{path.relative_to(TESTS)} imports {module}"
        for path in TESTS.rglob("*.py")
        for module in imported_modules(path)
        if module.startswith("tests.") and module.rsplit(".", 1)[-1].startswith("test_")
    }
    assert not offenders, sorted(offenders)
