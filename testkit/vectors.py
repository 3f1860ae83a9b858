"""Synthetic embeddings with known structure, for tests and the search benchmark."""

from __future__ import annotations

import numpy as np


def clustered(count: int, dim: int, *, seed: int = 0, per_cluster: int = 50,
              spread: float = 0.9) -> np.ndarray:
    """``count`` unit vectors (float16) around ``count / per_cluster`` random centres: each is
    a centre plus Gaussian noise of norm ~``spread`` (cosine ~0.74 to it at 0.9), as photos of
    one kind of product sit around a point of CLIP's space."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(count // per_cluster, 1), dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((count, dim), np.float16)
    for start in range(0, count, 100_000):
        size = min(100_000, count - start)
        rows = centres[rng.integers(0, len(centres), size)]
        rows = rows + rng.standard_normal((size, dim), dtype=np.float32) * (spread / np.sqrt(dim))
        out[start:start + size] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def near_copies(vectors: np.ndarray, *, seed: int = 0, cosine: float = 0.995) -> np.ndarray:
    """A near-duplicate of each row (a re-encoded or resized copy): about ``cosine`` to it."""
    rng = np.random.default_rng(seed)
    dim = vectors.shape[1]
    noise = rng.standard_normal(vectors.shape, dtype=np.float32)
    noise *= np.sqrt(2 * (1 - cosine)) / np.sqrt(dim)
    rows = vectors.astype(np.float32) + noise
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float16)
