"""Modules fit in 300 lines and functions on a screen (50 lines), in worker/ and producer/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_LINES = 300
FUNCTION_LINES = 50


def too_long(path: Path, root: Path = ROOT) -> dict[str, str]:
    """What in ``path`` is over the limits, by where it is ("path" or "path function"): the
    module, and each function (its decorators and docstring included, as a reader sees it)."""
    text = path.read_text(encoding="utf-8")
    name = path.relative_to(root).as_posix()
    found = {}
    if (lines := len(text.splitlines())) > MODULE_LINES:
        found[name] = f"{name}: {lines} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if (length := (node.end_lineno or node.lineno) - first + 1) > FUNCTION_LINES:
                found[f"{name} {node.name}"] = f"{name}:{first} {node.name}: {length} lines"
    return found


@pytest.mark.parametrize("package", ["worker", "producer"])
def test_modules_and_functions_fit_their_limits(package: str):
    problems = [text for path in sorted((ROOT / package).rglob("*.py"))
                for text in too_long(path).values()]
    assert problems == []


def test_the_limits_are_measured_as_a_reader_counts(tmp_path: Path):
    body = "\n".join(f"    x{n} = {n}" for n in range(FUNCTION_LINES - 1))
    probe = tmp_path / "probe.py"
    probe.write_text(f"def fits():\n{body}\n\n\n@staticmethod\ndef over():\n{body}\n")
    assert too_long(probe, tmp_path) == {"probe.py over": "probe.py:53 over: 51 lines"}
