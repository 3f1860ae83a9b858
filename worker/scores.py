"""Image embeddings to stored labels: softmax over a label set, the top k of each image."""

from __future__ import annotations

from typing import Any

import numpy as np

from worker.core.contract import label_scores
from worker.core.labels import LabelSet


def top_labels(embeddings: np.ndarray, labelset: LabelSet, texts: np.ndarray,
               logit_scale: float, k: int) -> list[list[dict[str, Any]]]:
    """Each image's ``k`` best labels with their scores; ``embeddings`` (B, D) normalised.

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
    return [label_scores(labelset.labels, labelset.parents, indices, scores)
            for indices, scores in zip(top.tolist(), picked.tolist(), strict=True)]
