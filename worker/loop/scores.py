"""Image embeddings to stored labels: softmax over a label set, the top k of each image."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from worker.core.contract import label_scores
from worker.core.labels import LabelSet


def top_k(embeddings: np.ndarray, texts: np.ndarray, logit_scale: float, k: int
          ) -> tuple[list[list[int]], list[list[float]]]:
    """Each image's ``k`` best label indices and their softmax scores, best first.

    One float32 matrix product for the whole batch. The top k come from k passes of argmax
    (the first of equal scores wins, as in a stable sort): with 1,000 labels that is ~10x
    cheaper than np.argpartition, whose per-row selection dominated relabelling.
    """
    probs = np.asarray(embeddings, dtype=np.float32) @ texts.T
    probs *= np.float32(logit_scale)
    probs -= probs.max(axis=1, keepdims=True)
    np.exp(probs, out=probs)
    totals = probs.sum(axis=1)
    rows = np.arange(len(probs))
    k = min(k, probs.shape[1])
    top, picked = np.empty((len(probs), k), np.intp), np.empty((len(probs), k), np.float32)
    for rank in range(k):
        top[:, rank] = probs.argmax(axis=1)
        picked[:, rank] = probs[rows, top[:, rank]]
        probs[rows, top[:, rank]] = -1.0  # below any probability: the next pass skips it
    picked /= totals[:, None]
    return top.tolist(), picked.tolist()


def top_labels(embeddings: np.ndarray, labelset: LabelSet, texts: np.ndarray,
               logit_scale: float, k: int) -> list[list[dict[str, Any]]]:
    """Each image's ``k`` best labels with their scores; ``embeddings`` (B, D) normalised."""
    return [label_scores(labelset.labels, labelset.parents, indices, scores)
            for indices, scores in zip(*top_k(embeddings, texts, logit_scale, k), strict=True)]


class LabelsText:
    """Top labels as the JSON text of ``label_scores`` (same keys, order and rounding), from
    parts rendered once per label set: relabelling writes them 20,000 times a second."""

    def __init__(self, labelset: LabelSet) -> None:
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
