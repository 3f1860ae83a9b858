"""``producer duplicates``: groups of near-duplicates written as JSON lines, CSV or an HTML page."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import jinja2

from worker.core.errors import ConfigError
from worker.search import Group

FORMATS = (".jsonl", ".csv", ".html")
_PAGE = """<!doctype html><html lang="zh"><meta charset="utf-8"><title>Near-duplicates</title>
<style>body{font:14px sans-serif;margin:2em}td{padding:2px 8px}h2{font-size:15px}</style>
<h1>{{ groups|length }} groups of near-duplicates (cosine &ge; {{ threshold }})</h1>
{% for g in groups %}<h2>Group {{ loop.index }}: {{ g.members|length }} images
{%- if g.exact %} (identical bytes){% endif %}</h2><table>
{% for m in g.members %}<tr><td>{{ '%.4f'|format(m.score) }}</td><td>{{ m.top_label or '' }}</td>
<td>{{ m.uri }}</td></tr>{% endfor %}</table>{% endfor %}</html>
"""


def check_output(path: Path) -> None:
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(f"--output {path}: write .jsonl, .csv or .html")


def write(groups: Sequence[Group], path: Path, threshold: float) -> None:
    """The groups in the format the file's suffix names (one group per line, or per row)."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        text = "".join(json.dumps({"group": n, **asdict(g)}, ensure_ascii=False) + "\n"
                       for n, g in enumerate(groups, 1))
    elif suffix == ".csv":
        out = io.StringIO()
        rows = csv.writer(out)
        rows.writerow(["group", "exact", "uri", "score", "sha256", "top_label", "run_id"])
        for n, g in enumerate(groups, 1):
            rows.writerows([n, g.exact, m.uri, f"{m.score:.6f}", m.sha256, m.top_label,
                            m.run_id] for m in g.members)
        text = out.getvalue()
    else:
        page = jinja2.Environment(autoescape=True).from_string(_PAGE)
        text = page.render(groups=groups, threshold=threshold)
    path.write_text(text, encoding="utf-8")
