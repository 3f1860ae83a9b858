"""Image embeddings to stored labels: softmax over a label set, the top k of each image."""

from __future__ import annotations

from typing import Any

import numpy as np

from worker.core.contract import label_scores
from worker.core.labels import LabelSet

BLOCK_BYTES = 32 * 2**20  # the float32 (images x labels) scores held at once


def top_k(embeddings: np.ndarray, texts: np.ndarray, logit_scale: float, k: int
          ) -> tuple[list[list[int]], list[list[float]]]:
    """Each image's ``k`` best label indices and their softmax scores, best first.

    Scored in blocks of labels (one float32 matrix product each), so that memory is at most
    BLOCK_BYTES whatever the size of the label set (5,000 images x 60,000 labels at once were
    1.2 GB); the softmax runs across blocks (the largest logit so far and the sum of
    exponentials under it). The top k come from k passes of argmax (the first of equal scores
    wins, as in a stable sort): with 1,000 labels that is ~10x cheaper than np.argpartition,
    whose per-row selection dominated relabelling.
    """
    images = np.asarray(embeddings, dtype=np.float32)
    count, k = len(images), min(k, len(texts))
    block = max(k, BLOCK_BYTES // (4 * max(count, 1)))
    best = np.full((count, 0), -np.inf, np.float32), np.empty((count, 0), np.intp)
    peak, total = np.full(count, -np.inf, np.float32), np.zeros(count, np.float32)
    for start in range(0, len(texts), block):
        logits = images @ texts[start:start + block].T
        logits *= np.float32(logit_scale)
        values, indices = _argmax_passes(logits, k)  # takes them out of ``logits`` (-inf)
        higher = np.maximum(peak, values[:, 0])
        logits -= higher[:, None]
        np.exp(logits, out=logits)
        total *= np.exp(peak - higher)
        total += logits.sum(axis=1) + np.exp(values - higher[:, None]).sum(axis=1)
        peak = higher
        merged = np.hstack([best[0], values]), np.hstack([best[1], indices + start])
        values, order = _argmax_passes(merged[0], k)
        best = values, np.take_along_axis(merged[1], order, axis=1)
        del logits  # before the next block's are made
    scores = np.exp(best[0] - peak[:, None]) / total[:, None]
    return best[1].tolist(), scores.tolist()


def _argmax_passes(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest of each row, largest first, and their columns (the first of equal
    values first); each is replaced by -inf in ``scores``."""
    rows = np.arange(len(scores))
    k = min(k, scores.shape[1])
    values, columns = np.empty((len(scores), k), np.float32), np.empty((len(scores), k), np.intp)
    for rank in range(k):
        columns[:, rank] = scores.argmax(axis=1)
        values[:, rank] = scores[rows, columns[:, rank]]
        scores[rows, columns[:, rank]] = -np.inf
    return values, columns


def top_labels(embeddings: np.ndarray, labelset: LabelSet, texts: np.ndarray,
               logit_scale: float, k: int) -> list[list[dict[str, Any]]]:
    """Each image's ``k`` best labels with their scores; ``embeddings`` (B, D) normalised."""
    return [label_scores(labelset.labels, labelset.parents, indices, scores)
            for indices, scores in zip(*top_k(embeddings, texts, logit_scale, k), strict=True)]

