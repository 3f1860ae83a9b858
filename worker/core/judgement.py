"""What an image's label is once reviewers had their say: a human label wins, a rejected label
never shows, a label below its threshold is unsure; and the threshold a precision asks for."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

RIGHT, WRONG = "right", "wrong"
VERDICTS = (RIGHT, WRONG)


@dataclass(frozen=True)
class Verdicts:
    """Reviewers' verdicts on one image under one label set: at most one right label."""

    right: str | None = None
    wrong: frozenset[str] = field(default_factory=frozenset)
    reviewer: str | None = None  # who gave the right label


@dataclass(frozen=True)
class Judged:
    """The label an image shows and exports, and why."""

    label: str | None
    score: float | None  # the model's score of that label (None: not among its top k)
    by: str  # "reviewer" or "model"
    unsure: bool
    rejected: tuple[str, ...] = ()


def judge(labels: Sequence[Mapping[str, Any]], verdicts: Verdicts | None,
          thresholds: Mapping[str, float]) -> Judged:
    """The label of an image whose model labels (best first) are ``labels``."""
    verdicts = verdicts or Verdicts()
    scores = {str(entry["label"]): float(entry["score"]) for entry in labels}
    rejected = tuple(sorted(verdicts.wrong))
    if verdicts.right is not None:
        return Judged(verdicts.right, scores.get(verdicts.right), "reviewer", False, rejected)
    for entry in labels:
        label = str(entry["label"])
        if label not in verdicts.wrong:
            score = float(entry["score"])
            return Judged(label, score, "model", score < thresholds.get(label, 0.0), rejected)
    return Judged(None, None, "model", True, rejected)  # every label shown was rejected


def propose_threshold(scored: Iterable[tuple[float, bool]], precision: float) -> float | None:
    """The lowest score at which a label keeps ``precision`` on reviewed images: of the images
    it is the top label of, with ``(score, the label is right)``, those scoring at least the
    threshold are right at least that often. None if no threshold does (or nothing was
    reviewed)."""
    ordered = sorted(scored, key=lambda pair: -pair[0])
    best, right = None, 0
    for seen, (score, correct) in enumerate(ordered, start=1):
        right += correct
        # Only where the score drops: images of equal score are kept or dropped together.
        last = seen == len(ordered) or ordered[seen][0] < score
        if last and right / seen >= precision:
            best = score
    return best
