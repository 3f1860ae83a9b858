"""The report as one self-contained HTML page: every label, file name and error escaped."""

from __future__ import annotations

import base64
import hashlib
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
    env.filters.update(name=name, place=place, redact=redact, data_uri=data_uri)
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
        run=figures.run, summary=summary(figures), chart=chart(figures.histogram),
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


def chart(histogram: list[int]) -> dict[str, Any]:
    """Bars of the score histogram in SVG coordinates, and tick labels under them."""
    most = max(histogram, default=0)
    step = CHART_WIDTH / max(1, len(histogram))
    room = CHART_HEIGHT - AXIS - 16
    bars = []
    for i, n in enumerate(histogram):
        height = room * n / most if most else 0
        low, high = i / len(histogram), (i + 1) / len(histogram)
        bars.append(Bar(round(i * step + 1, 1), round(CHART_HEIGHT - AXIS - height, 1),
                        round(step - 2, 1), round(height, 1),
                        f"{low:.2f} to {high:.2f}: {n} images"))
    ticks = [{"x": round(CHART_WIDTH * t, 1) if 0 < t < 1 else (8 if t == 0 else CHART_WIDTH - 8),
              "text": f"{t:g}"} for t in (0, 0.25, 0.5, 0.75, 1)]
    return {"width": CHART_WIDTH, "height": CHART_HEIGHT, "bars": bars, "ticks": ticks,
            "most": most}
