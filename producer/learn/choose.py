"""Which learned vectors to keep, by measurement: k-fold cross-validated agreement with the
reviewers' verdicts for zero-shot and each candidate; the best is fitted on every verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from producer.learn.fit import Examples, Start, agreeing, fit, keep_verdicts

# (method, its parameter): prototype weights, probe decays. Measured by benchmarks.corrections.
CANDIDATES: tuple[tuple[str, float], ...] = (
    ("prototype", 1.0), ("prototype", 2.0), ("prototype", 3.0), ("prototype", 4.0),
    ("probe", 0.01), ("probe", 0.1),
)
DEFAULT = ("prototype", 2.0)  # too few verdicts to measure: the benchmark's best
FOLDS = 5


@dataclass
class Learned:
    """The chosen vectors and what was measured on the way."""

    vectors: np.ndarray
    method: str
    value: float
    report: dict[str, Any] = field(default_factory=dict)


def folds(examples: Examples, k: int = FOLDS, seed: int = 0) -> list[np.ndarray]:
    """Held-out rows of each fold; an image's verdicts stay in one fold together."""
    groups = np.unique(examples.group)
    np.random.default_rng(seed).shuffle(groups)
    k = min(k, len(groups))
    parts = np.array_split(groups, k) if k >= 2 else []
    return [np.flatnonzero(np.isin(examples.group, part)) for part in parts]


def cross_validated(start: Start, examples: Examples, method: str, value: float,
                    held: list[np.ndarray]) -> float | None:
    """Agreement on held-out verdicts, each fold fitted on the others; None without folds."""
    if not held:
        return None
    agree = 0
    for rows in held:
        train = examples.take(np.setdiff1d(np.arange(len(examples)), rows))
        agree += int(agreeing(fit(start, train, method, value), examples.take(rows)).sum())
    return agree / len(examples)


def learn(start: Start, examples: Examples) -> Learned:
    """Measure every candidate, fit the best on all verdicts, keep every verdict."""
    with threadpool_limits(1):  # small products: threads cost far more than they save
        return _learn(start, examples)


def _learn(start: Start, examples: Examples) -> Learned:
    held = folds(examples)
    measured = {f"{m} {v:g}": cross_validated(start, examples, m, v, held)
                for m, v in CANDIDATES}
    zero = cross_validated(start, examples, "zero-shot", 0.0, held)
    scored = [(a, -i) for i, a in enumerate(measured.values()) if a is not None]
    method, value = CANDIDATES[-max(scored)[1]] if scored else DEFAULT
    vectors = fit(start, examples, method, value)
    vectors = keep_verdicts(start, examples, vectors)
    contradicted = int((~agreeing(vectors, examples)).sum())
    report = {"verdicts": len(examples), "images": len(np.unique(examples.group)),
              "right": int(examples.right.sum()), "wrong": int((~examples.right).sum()),
              "labels": len(np.unique(examples.label)), "folds": len(held),
              "agreement": {"zero-shot": zero, "learned": measured.get(f"{method} {value:g}")},
              "candidates": measured, "method": method, "value": value,
              "contradicted": contradicted}
    return Learned(vectors, method, value, report)
