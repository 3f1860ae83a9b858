"""Exact search: cosine by matrix products over float16 embeddings, in blocks of bounded size."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

BLOCK = 65_536  # rows converted to float32 at a time: 128 MB at 512 wide


def top(queries: np.ndarray, vectors: np.ndarray, keys: np.ndarray, k: int
        ) -> tuple[np.ndarray, np.ndarray]:
    """(scores, keys) of the ``k`` best rows for each query, best first; keys -1 past the end."""
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_k = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(vectors), BLOCK):
        block = np.asarray(vectors[start:start + BLOCK], np.float32)
        scores = np.concatenate([best_s, queries @ block.T], axis=1)
        ids = np.concatenate([best_k, np.broadcast_to(keys[start:start + BLOCK],
                                                      (len(queries), len(block)))], axis=1)
        keep = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(scores, keep, 1)
        best_k = np.take_along_axis(ids, keep, 1)
    if best_s.shape[1] < k:
        pad = k - best_s.shape[1]
        best_s = np.pad(best_s, ((0, 0), (0, pad)), constant_values=-np.inf)
        best_k = np.pad(best_k, ((0, 0), (0, pad)), constant_values=-1)
    return best_s, best_k


def pairs(vectors: np.ndarray, keys: np.ndarray, threshold: float
          ) -> Iterator[tuple[int, int, float]]:
    """Every pair (key a < key b by position, score) whose cosine is at least ``threshold``."""
    step = BLOCK // 16  # a (step x n) block of scores at a time
    for start in range(0, len(vectors), step):
        rows = np.asarray(vectors[start:start + step], np.float32)
        for other in range(start, len(vectors), BLOCK):
            block = np.asarray(vectors[other:other + BLOCK], np.float32)
            scores = rows @ block.T
            i, j = np.nonzero(scores >= threshold)
            keep = start + i < other + j  # each pair once, never an image with itself
            for a, b in zip(i[keep], j[keep], strict=True):
                yield int(keys[start + a]), int(keys[other + b]), float(scores[a, b])
