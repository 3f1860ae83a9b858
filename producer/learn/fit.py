"""Label vectors fitted to reviewers' corrections: prototype refinement and a linear probe
started from the text vectors. NumPy only: learning needs no model and no image tower.

Every method returns (labels, dim) vectors scored as ``scale * image @ vectors.T``, the form
in which the text tower's vectors are scored, so that relabelling with them is relabelling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Examples:
    """Corrected images: their embeddings, the label a verdict is on, and the verdict."""

    x: np.ndarray  # (N, D) float32, normalised
    label: np.ndarray  # (N,) label indices
    right: np.ndarray  # (N,) True: the label is right; False: it is wrong
    group: np.ndarray  # (N,) the image each belongs to (an image can have several verdicts)

    def __len__(self) -> int:
        return len(self.label)

    def take(self, rows: np.ndarray) -> Examples:
        return Examples(self.x[rows], self.label[rows], self.right[rows], self.group[rows])


@dataclass(frozen=True)
class Start:
    """What learning starts from: the zero-shot vectors, their logit scale, and the centre of
    the image embeddings (the direction every image shares, taken out of prototypes)."""

    texts: np.ndarray  # (L, D) float32, normalised
    scale: float
    centre: np.ndarray  # (D,)


def _normalised(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32)


def top(vectors: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Each image's best label (the scale does not change which)."""
    return np.asarray(x @ vectors.T).argmax(axis=1)


def agreeing(vectors: np.ndarray, examples: Examples) -> np.ndarray:
    """Per verdict: does the best label agree (right: it is the label; wrong: it is not)?"""
    return (top(vectors, examples.x) == examples.label) == examples.right


SHRINK = 2.0  # a label's shift is its images' sum over (their count + SHRINK): few, less trusted


def prototype(start: Start, examples: Examples, weight: float) -> np.ndarray:
    """Each corrected label's text vector plus ``weight`` times what sets its right images
    apart (their mean less the centre of all images, shrunk when they are few), less half
    that for its wrong ones.

    Not normalised again: the shift is in directions that tell images apart, so a label that
    got one is not favoured over one that did not on images of neither.
    """
    vectors = start.texts.copy()
    for label in np.unique(examples.label):
        mine = examples.label == label
        for rows, sign in ((mine & examples.right, 1.0), (mine & ~examples.right, -0.5)):
            if rows.any():
                apart = (examples.x[rows] - start.centre).sum(axis=0) / (rows.sum() + SHRINK)
                vectors[label] += sign * weight * apart
    return vectors


def probe(start: Start, examples: Examples, decay: float, begin: np.ndarray | None = None,
          weights: np.ndarray | None = None, steps: int = 150, rate: float = 0.001
          ) -> np.ndarray:
    """A linear probe over the label set (softmax at the zero-shot scale) from ``begin``
    (default: the text vectors): cross-entropy on right labels, -log(1 - p) on wrong ones,
    and ``decay`` pulling the vectors back to where they began. Adam, a fixed number of steps.
    """
    anchor = (start.texts if begin is None else begin).astype(np.float32)
    vectors = anchor.copy()
    weights = np.ones(len(examples), np.float32) if weights is None else weights
    weights = (weights / weights.sum()).astype(np.float32)
    rows = np.arange(len(examples))
    onehot = np.zeros((len(examples), len(vectors)), np.float32)
    onehot[rows, examples.label] = 1.0
    first, second = np.zeros_like(vectors), np.zeros_like(vectors)
    for step in range(1, steps + 1):
        logits = start.scale * (examples.x @ vectors.T)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        p_label = p[rows, examples.label][:, None]
        # d/dlogits of -log p (right) and of -log(1 - p) (wrong)
        wrong = p_label / np.maximum(1.0 - p_label, 1e-6) * (onehot - p)
        grad_logits = np.where(examples.right[:, None], p - onehot, wrong) * weights[:, None]
        grad = start.scale * (grad_logits.T @ examples.x) + decay * (vectors - anchor)
        first = 0.9 * first + 0.1 * grad
        second = 0.999 * second + 0.001 * grad * grad
        vectors -= rate * (first / (1 - 0.9**step)) / (
            np.sqrt(second / (1 - 0.999**step)) + 1e-8)
    return vectors.astype(np.float32)


def fit(start: Start, examples: Examples, method: str, value: float) -> np.ndarray:
    """The vectors of one candidate: ``method`` with its one parameter."""
    if method == "prototype":
        return prototype(start, examples, value)
    if method == "probe":
        return probe(start, examples, value)
    if method == "zero-shot":
        return start.texts
    raise ValueError(f"unknown method {method!r}")


def keep_verdicts(start: Start, examples: Examples, vectors: np.ndarray, rounds: int = 8
                  ) -> np.ndarray:
    """The vectors, probed further from where they are until no verdict they learned from is
    contradicted: each round weighs the contradicted verdicts ten times more (bounded: the
    caller reports any that remain)."""
    weights = np.ones(len(examples), np.float32)
    for _ in range(rounds):
        bad = ~agreeing(vectors, examples)
        if not bad.any():
            break
        weights[bad] *= 10.0
        vectors = probe(start, examples, 1.0, begin=vectors, weights=weights, steps=50)
    return vectors


def logit_scale(x: np.ndarray, texts: np.ndarray, top_scores: np.ndarray) -> float | None:
    """The logit scale the stored top scores were computed at (the producer has no model to
    ask): per image, the scale at which the softmax gives its top label that score (it grows
    with the scale), found by bisection; their median. None without usable images."""
    found = []
    for cosines, score in zip(x @ texts.T, top_scores, strict=True):
        low, high = 0.0, 7.0  # ln(scale): 1 to ~1,100
        for _ in range(40):
            middle = (low + high) / 2
            z = np.exp(middle) * (cosines - cosines.max())
            if 1.0 / np.exp(z).sum() < score:
                low = middle
            else:
                high = middle
        if 0.0 < low < 7.0:
            found.append(np.exp(low))
    return float(np.median(found)) if found else None
