"""docs/hostile-input.md names real tests: every `file.py::test_name` (and each `::test_name`
that follows it in a cell, of the same file) is a test function of that file."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def named_tests(text: str) -> list[tuple[str, str]]:
    """(file, function) for every test the table names, in order."""
    out = []
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        current = None
        for m in re.finditer(r"`(test_\w+\.py)?::(test_\w+)`|`(test_\w+\.py)`", line):
            if m.group(3):
                current = m.group(3)
                continue
            current = m.group(1) or current
            assert current, f"{m.group(0)} names no file: {line[:120]}"
            out.append((current, m.group(2)))
    return out


def test_every_test_named_in_hostile_input_md_exists():
    pairs = named_tests((ROOT / "docs" / "hostile-input.md").read_text(encoding="utf-8"))
    assert len(pairs) >= 60
    functions: dict[str, set[str]] = {}
    for file, _ in pairs:
        if file not in functions:
            tree = ast.parse((ROOT / "tests" / file).read_text(encoding="utf-8"))
            functions[file] = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    missing = [f"{f}::{n}" for f, n in pairs if n not in functions[f]]
    assert not missing, missing
