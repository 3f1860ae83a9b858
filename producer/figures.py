"""What the report page shows, as plain values: the run, galleries per label, what to review,
failures by reason and the score histogram; bounded however large the run."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from worker.core.contract import uri_hash
from worker.db import report as db
from worker.db.labelsets import load_labelset

PER_LABEL = 48  # photos shown per label, highest score first
REVIEW = 24  # least confident photos
PHOTOS = 1000 - REVIEW  # photos in all galleries together: the page stays small
PER_REASON = 50  # failures listed per reason
# Behind each "N more": names and scores (labels) or errors (reasons), up to these many each
# and in all: a large run's page stays a few MB, `producer export` has every image.
MORE_PER_LABEL, MORE_NAMES = 200, 3000
MORE_PER_REASON = 450
BINS = 20  # histogram steps at most, of a round size spanning the scores found


@dataclass(frozen=True)
class Photo:
    """A tagged image; ``uri`` as stored (previews fetch it, the page shows it redacted)."""

    uri: str
    label: str
    score: float
    runner_up: tuple[str, float] | None = None


@dataclass(frozen=True)
class Gallery:
    """A label's best photos, and how many images it has in all."""

    label: str
    parent: str | None
    count: int
    photos: list[Photo]
    more: list[Photo] = field(default_factory=list)  # the next ones, by name and score


@dataclass(frozen=True)
class Failures:
    """A reason's first failures (URI, error), and how many there are in all."""

    reason: str
    count: int
    items: list[tuple[str, str]]
    more: list[tuple[str, str]] = field(default_factory=list)  # the next ones, listed folded


@dataclass
class Figures:
    """Everything on the page but the previews."""

    run: Mapping[str, Any]
    labelset_name: str
    labelset_size: int
    runtimes: list[str]
    seconds: float | None
    histogram: list[int]
    edges: list[float]  # the histogram's steps: len(histogram) + 1 scores
    galleries: list[Gallery] = field(default_factory=list)
    review: list[Photo] = field(default_factory=list)
    failures: list[Failures] = field(default_factory=list)
    file_roots: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float | None:
        answered = self.run["done"] + self.run["failed"]
        return answered / self.seconds if self.seconds else None

    def photo_uris(self) -> list[str]:
        """Every URI that gets a preview, once, in page order."""
        photos = [*self.review, *(p for g in self.galleries for p in g.photos)]
        return list(dict.fromkeys(p.uri for p in photos))


def gather(engine: Engine, run: Mapping[str, Any], where: Sequence[sa.ColumnElement[bool]]
           ) -> Figures:
    """The figures of ``run``'s images, or of those ``where`` selects."""
    labelset = load_labelset(engine, run["labelset_id"])
    with engine.connect() as conn:
        counts = db.label_counts(conn, where)
        edges = score_edges(db.score_range(conn, where), BINS)
        caps = (per_label_cap(counts.values(), PER_LABEL, PHOTOS),
                per_label_cap(counts.values(), PER_LABEL + MORE_PER_LABEL, PHOTOS + MORE_NAMES))
        best = db.best_per_label(conn, where, max(caps))
        figures = Figures(
            run=run, labelset_name=labelset.name if labelset else "",
            labelset_size=len(labelset.labels) if labelset else 0,
            runtimes=db.runtimes(conn, where),
            seconds=_seconds(run["started_at"], db.last_result_at(conn, run["id"])),
            histogram=db.score_histogram(conn, where, edges), edges=edges,
            review=[_photo(row) for row in db.least_confident(conn, where, REVIEW)])
        reasons = db.failure_counts(conn, where)
        failed = db.failures(conn, where, PER_REASON + MORE_PER_REASON)
        parents = dict(zip(labelset.labels, labelset.parents, strict=True)) if labelset else {}
        figures.galleries = _galleries(counts, best, parents, caps[0])
        figures.file_roots = db.file_roots(conn, [uri_hash(u) for u in figures.photo_uris()])
    figures.failures = []
    for reason, n in reasons.items():
        items = [(r["uri"], r["error"] or "") for r in failed if r["reason"] == reason]
        figures.failures.append(Failures(reason, n, items[:PER_REASON], items[PER_REASON:]))
    return figures


def score_edges(found: tuple[float, float] | None, most: int) -> list[float]:
    """Histogram edges: at most ``most`` steps of a round size (1, 2, 2.5 or 5 times a power of
    ten) from a round score at or below the lowest to the highest.

    With hundreds or thousands of labels every best score is small (softmax): steps of 0..1
    would put every image in the first bar.
    """
    if found is None:
        return [i / most for i in range(most + 1)]
    low, high = found
    step = round_step(max(high - low, high / 100, 1e-9) / most)
    while True:
        start = math.floor(low / step + 1e-9) * step
        steps = max(1, math.ceil((high - start) / step - 1e-9))
        if steps <= most:
            return [round(start + i * step, 12) for i in range(steps + 1)]
        step = round_step(step * 1.001)  # the rounded start left the top out: a larger step


def round_step(at_least: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is >= ``at_least``."""
    power = 10.0 ** math.floor(math.log10(at_least))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= at_least * (1 - 1e-9))


def per_label_cap(counts: Iterable[int], most: int, total: int) -> int:
    """The largest cap (1..most) under which the labels' photos add up to at most ``total``."""
    sizes = list(counts)
    cap = most
    while cap > 1 and sum(min(n, cap) for n in sizes) > total:
        cap -= 1
    return cap


def _galleries(counts: Mapping[str, int], best: Sequence[Mapping[str, Any]],
               parents: Mapping[str, str | None], cap: int) -> list[Gallery]:
    """Labels most images first, each with its ``cap`` best photos, the next ones by name;
    past ``PHOTOS`` photos in all (thousands of labels) only names and counts."""
    by_label: dict[str, list[Photo]] = {label: [] for label in counts}
    for row in best:
        by_label[row["top_label"]].append(_photo(row))
    galleries: list[Gallery] = []
    room = PHOTOS
    for label, count in counts.items():
        photos = by_label[label][:min(cap, room)]
        room -= len(photos)
        galleries.append(Gallery(label, parents.get(label), count, photos,
                                 by_label[label][len(photos):]))
    return galleries


def _photo(row: Mapping[str, Any]) -> Photo:
    labels = row.get("labels") or []
    second = (labels[1]["label"], float(labels[1]["score"])) if len(labels) > 1 else None
    return Photo(row["uri"], row["top_label"], float(row["top_score"]), second)


def _seconds(started: str, last: datetime | None) -> float | None:
    """From the run's start to its last result (SQLite keeps UTC without a zone)."""
    if last is None:
        return None
    begin = datetime.fromisoformat(started)
    begin, last = (t if t.tzinfo else t.replace(tzinfo=UTC) for t in (begin, last))
    return max(0.001, (last - begin).total_seconds())
