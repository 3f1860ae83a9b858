"""Synthetic embeddings with known structure, for tests and the search benchmark.

Two shapes, because an approximate index's recall depends on the shape more than on anything
else (docs/performance.md): ``catalogue`` models what is known of CLIP's image embeddings (a
narrow cone, most of the variation in a few dozen directions, photos of one kind of product
close together); ``clustered`` is the worst case for a graph index, islands that are all
equally far apart, so that nothing on the way leads to the right one.
"""

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


def catalogue(count: int, dim: int, *, seed: int = 0, latent: int = 64, per_cluster: int = 50,
              cone: float = 0.7, noise: float = 0.5) -> np.ndarray:
    """``count`` unit vectors (float16): a direction they all share (CLIP's embeddings sit in a
    narrow cone: two unrelated photos at cosine ~0.25 here) plus a point of a ``latent``-wide
    space (``count / per_cluster`` kinds of product, their photos around them) laid into
    ``dim`` values, plus noise of norm ~``noise`` in every direction."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, latent + 1)).astype(np.float32))
    common, spread = basis[:, 0], basis[:, 1:].T
    centres = rng.standard_normal((max(count // per_cluster, 1), latent)).astype(np.float32)
    centres /= np.sqrt(latent)
    out = np.empty((count, dim), np.float16)
    for start in range(0, count, 100_000):
        size = min(100_000, count - start)
        points = centres[rng.integers(0, len(centres), size)]
        points += rng.standard_normal((size, latent)).astype(np.float32) * (0.5 / np.sqrt(latent))
        rows = cone * common + points @ spread
        rows += rng.standard_normal((size, dim)).astype(np.float32) * (noise / np.sqrt(dim))
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
