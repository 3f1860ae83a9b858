"""A relabel batch as sinks take it: result rows that share every column but their image's own.

`Result.row()` (worker/core/contract.py) is the one builder of a result row. A relabel writes
~20,000 rows a second, all of one range: a `Scored` batch takes the columns its rows share
from `Result.row()` once, and per image renders only what differs (the image's columns as its
fetch stored them, its labels as the JSON text of `label_scores`). The database sink writes it
as COPY text (``lines``); any other sink iterates it as `Result`s, made as they are asked for.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.core.contract import KEPT_RUNTIME, Item, Result, label_scores
from worker.core.errors import ItemError
from worker.core.labels import LabelSet

# An image's own columns, as the ``images`` table holds them (its latest fetch's Result.row()).
IMAGE = ("uri", "uri_hash", "signed", "item_key", "source_version", "content_sha256")
# The columns of a relabel's rows that differ between images (the rest is the same for a range).
SCORED = (*IMAGE, "labels", "top_label", "top_score")


class LabelsText:
    """Top labels as the JSON text of ``label_scores`` (same keys, order and rounding), from
    parts rendered once per label set: relabelling writes them 20,000 times a second."""

    def __init__(self, labelset: LabelSet) -> None:
        self.labelset = labelset
        self.labels = labelset.labels
        self.heads = [f'{{"label": {json.dumps(label, ensure_ascii=False)}, "score": '
                      for label in labelset.labels]
        self.tails = [f', "parent": {json.dumps(parent, ensure_ascii=False)}}}' if parent
                      else "}" for parent in labelset.parents]

    def render(self, indices: list[int], scores: list[float]) -> tuple[str, str, float]:
        """(the labels' JSON text, the top label, its score)."""
        rounded = [round(score, 6) for score in scores]
        text = ", ".join([self.heads[i] + repr(s) + self.tails[i]
                          for i, s in zip(indices, rounded, strict=True)])
        return f"[{text}]", self.labels[indices[0]], rounded[0]


@dataclass(frozen=True)
class Range:
    """What every result of a relabel range shares: a template `Result` (no image, no labels)."""

    model: str
    model_id: int
    weights: str | None
    labelset_id: str
    run_id: str

    def template(self, item: Item | None = None, **outcome: Any) -> Result:
        return Result(item=item or Item(""), model=self.model, labelset_id=self.labelset_id,
                      run_id=self.run_id, attempts=1, weights=self.weights, **outcome)

    def shared(self) -> dict[str, Any]:
        """The columns every done row of the range has, from the one row builder."""
        row = self.template(runtime=KEPT_RUNTIME).row()
        return {**{k: v for k, v in row.items() if k not in SCORED}, "model_id": self.model_id}


@dataclass
class Scored:
    """One batch of a relabel range: each image's columns (``images``, IMAGE first), its top-k
    label indices and scores (``top``, from ``scores.top_k``), and the images whose kept
    embedding is damaged (``failed``: position -> error), which fail alone."""

    range: Range
    labels: LabelsText
    images: Sequence[Sequence[Any]]
    top: tuple[list[list[int]], list[list[float]]]
    failed: Mapping[int, ItemError] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def lines(self) -> list[tuple[Any, ...]]:
        """The SCORED columns of each done image, its labels as JSON text (COPY's fast path)."""
        render, failed = self.labels.render, self.failed
        return [(*image[:len(IMAGE)], *render(indices, scores)) for i, (image, indices, scores)
                in enumerate(zip(self.images, *self.top, strict=True)) if i not in failed]

    def done_rows(self) -> list[dict[str, Any]]:
        """The done rows as dicts, labels as stored (statements: SQLite)."""
        shared = self.range.shared()
        return [{**shared, **dict(zip(SCORED, line, strict=True)), "labels": json.loads(line[6])}
                for line in self.lines()]

    def failed_rows(self) -> list[dict[str, Any]]:
        """The rows of the images whose kept embedding is damaged, from the one row builder."""
        own = len(IMAGE)
        return [{**self._result(i).row(), **dict(zip(IMAGE, self.images[i][:own], strict=True)),
                 "model_id": self.range.model_id} for i in self.failed]

    def __iter__(self) -> Iterator[Result]:
        """Each image's `Result`, made as it is asked for (its URI as stored: secrets out)."""
        for i in range(len(self.images)):
            yield self._result(i)

    def _result(self, i: int) -> Result:
        uri, _, _, key, version, content = self.images[i][:len(IMAGE)]
        item = Item(uri, key=key, version=version)
        error = self.failed.get(i)
        if error is not None:
            return self.range.template(item, content_sha256=content, reason=error.reason,
                                       error=str(error))
        labelset = self.labels.labelset
        labels = label_scores(labelset.labels, labelset.parents, self.top[0][i], self.top[1][i])
        return self.range.template(item, content_sha256=content, labels=labels,
                                   runtime=KEPT_RUNTIME)
