"""ARCHITECTURE.md's module table is true to the code: every module of worker/ and producer/
listed once, and nothing listed that is not there."""

from __future__ import annotations

import ast
import re
from collections import Counter

from testkit.imports import ROOT

PACKAGES = ("worker", "producer")


def listed() -> Counter[str]:
    """Each path the table's first column names: ``a/b.py``, then ``c.py`` beside it,
    ``a/{b,c}.py``, or a folder ``a/d/`` standing for every module in it."""
    section = (ROOT / "ARCHITECTURE.md").read_text().split("## Modules", 1)[1]
    section = section.split("\n## ", 1)[0]
    found: Counter[str] = Counter()
    for row in section.splitlines():
        if not row.startswith("| `"):
            continue
        folder = ""
        for name in re.findall(r"`([^`]+)`", row.split("|")[1]):
            rooted = name.split("/")[0] in (*PACKAGES, "testkit", "migrations")
            path = name if rooted else f"{folder}/{name}"
            folder = path.rstrip("/") if path.endswith("/") else path.rsplit("/", 1)[0]
            match = re.fullmatch(r"(.*)\{(.+)\}(.*)", path)
            for one in ([match[1] + part + match[3] for part in match[2].split(",")]
                        if match else [path]):
                found[one.rstrip("/")] += 1
    return found


def modules() -> set[str]:
    """Every module file, less packages' ``__init__.py`` that hold only a docstring."""
    out = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            body = ast.parse(path.read_text()).body
            if path.name == "__init__.py" and len(body) <= 1:
                continue
            out.add(str(path.relative_to(ROOT)))
    return out


def test_every_module_is_listed_once_and_every_listed_path_exists():
    table = listed()
    assert not [path for path, n in table.items() if n > 1], "listed twice"
    assert not [path for path in table if not (ROOT / path).exists()], "listed, not there"
    folders = {path for path in table if (ROOT / path).is_dir()}
    missing = {m for m in modules() if m not in table
               and not any(m.startswith(folder + "/") for folder in folders)}
    assert not missing, f"not in ARCHITECTURE.md's module table: {sorted(missing)}"
