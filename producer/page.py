"""The report as one self-contained HTML page: every label, file name and error escaped."""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import jinja2
from markupsafe import Markup

from producer.figures import Figures
from producer.render import counts, weights
from worker.core.redact import redact
from worker.sources import scheme
from worker.sources.local import path_of, shown

if TYPE_CHECKING:  # the previews' module loads Pillow: `producer --help` does not need it
    from producer.thumbnails import Preview

TEMPLATES = resources.files("producer") / "templates"
CHART_WIDTH, CHART_HEIGHT, AXIS = 640, 180, 18


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    title: str


def name(uri: str) -> str:
    """What a person calls the image: its file name (the URI's last path segment)."""
    path = urlsplit(uri).path if "://" in uri or uri.startswith("file:") else uri
    return redact(unquote(path.rstrip("/").rpartition("/")[2]) or uri)


def place(uri: str) -> str:
    """Where the image is, as a person reads it: a file's path; other URIs with secrets masked."""
    return shown(path_of(uri)) if scheme(uri) in {"", "file"} else redact(uri)


def data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters.update(name=name, place=place, redact=redact, data_uri=data_uri, score=score)
    return env


def _inline(file: str) -> tuple[Markup, str]:
    """A static file of ours to inline, and its hash for the page's content security policy."""
    text = (TEMPLATES / file).read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
    return Markup(text), f"sha256-{digest}"  # our own file, never input: not escaped


def render(figures: Figures, previews: Mapping[str, Preview], generated: datetime) -> str:
    style, style_hash = _inline("report.css")
    script, script_hash = _inline("report.js")
    return _environment().get_template("report.html").render(
        run=figures.run, summary=summary(figures), chart=chart(figures.histogram, figures.edges),
        review=figures.review, failures=figures.failures, galleries=figures.galleries,
        previews=previews, generated=_when(generated),
        style=style, style_hash=style_hash, script=script, script_hash=script_hash)


def summary(figures: Figures) -> list[tuple[str, str]]:
    """The run's figures as (term, value) lines."""
    run: Mapping[str, Any] = figures.run
    rate = figures.images_per_second
    skipped = f" ({counts(run['skipped_by_reason'])})" if run["skipped_by_reason"] else ""
    failed = f" ({counts(run['failed_by_reason'])})" if run["failed_by_reason"] else ""
    shown = sum(g.count for g in figures.galleries), sum(f.count for f in figures.failures)
    return [
        ("model", redact(run["model"])),
        ("weights", weights(run["weights"]).removeprefix("weights ")),
        ("runtime", ", ".join(figures.runtimes) or "-"),
        ("label set", f"{figures.labelset_name or run['labelset_id']} ({run['labelset_id']}, "
                      f"{figures.labelset_size} labels)"),
        ("state", run["state"] + (f": {redact(run['error'])}" if run.get("error") else "")),
        ("listed", f"{run['listed']}: enqueued {run['enqueued']}, skipped {run['skipped']}"
                   f"{skipped}"),
        ("this run", f"{run['done']} tagged, {run['failed']} failed{failed}, "
                     f"{run['pending']} pending"),
        ("on this page", f"{shown[0]} tagged, {shown[1]} failed"),
        ("started", _when(run["started_at"])),
        ("duration", f"{figures.seconds:.1f} s" if figures.seconds else "-"),
        ("images/s", f"{rate:.1f}" if rate else "-"),
    ]


def _when(moment: datetime | str) -> str:
    """A time (stored as ISO text) in UTC to the second; SQLite keeps UTC without a zone."""
    moment = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    moment = moment.astimezone(UTC) if moment.tzinfo else moment
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def score(value: float) -> str:
    """A score with three significant digits at least: 5,000 labels' scores are ~0.0002."""
    if value <= 0 or value >= 0.01:
        return f"{value:.3f}"
    return f"{value:.{min(9, 2 - math.floor(math.log10(value)))}f}"


def decimals(step: float) -> int:
    """Digits after the point that show every edge of steps of this size (0.025: 3)."""
    return next(d for d in range(12) if abs(round(step, d) - step) < step * 1e-6)


def chart(histogram: list[int], edges: list[float]) -> dict[str, Any]:
    """Bars of the score histogram in SVG coordinates, and tick labels under them."""
    most = max(histogram, default=0)
    bins = max(1, len(histogram))
    step = CHART_WIDTH / bins
    room = CHART_HEIGHT - AXIS - 16
    digits = decimals(edges[1] - edges[0]) if len(edges) > 1 else 2
    bars = []
    for i, n in enumerate(histogram):
        height = room * n / most if most else 0
        bars.append(Bar(round(i * step + 1, 1), round(CHART_HEIGHT - AXIS - height, 1),
                        round(step - 2, 1), round(height, 1),
                        f"{edges[i]:.{digits}f} to {edges[i + 1]:.{digits}f}: {n} images"))
    every = max(1, -(-bins // 4))  # about five ticks, on edges, the last one among them
    marks = list(range(0, bins + 1, every))
    if marks[-1] != bins:
        marks[-1 if bins - marks[-1] < every / 2 else len(marks):] = [bins]
    ticks = [{"x": round(step * i, 1), "text": f"{edges[i]:.{digits}f}",
              "anchor": "start" if i == 0 else "end" if i == bins else "middle"}
             for i in marks if i < len(edges)]
    return {"width": CHART_WIDTH, "height": CHART_HEIGHT, "bars": bars, "ticks": ticks,
            "most": most}
