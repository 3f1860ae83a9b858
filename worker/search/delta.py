"""What changed since the main index was saved: new vectors searched exactly beside it, and the
keys it holds that no longer answer (removed or replaced), until both are folded into it.

Adding 10,000 embeddings to a 1,000,000-vector index used to mean rewriting its 1 GB file; a
delta of up to FOLD_AT vectors is a file of a few MB written instead, and an exact scan of it
costs about what a flat index of that size does (2 ms at 20,000, docs/performance.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from worker.search import exact

FOLD_AT = 20_000  # past this many vectors in a delta, it is folded into the main index
PAIR_ROWS = 2048  # delta vectors compared with a block of queries at a time


@dataclass
class Delta:
    """Vectors (float16, as kept) under their keys, and the main index's keys left out."""

    keys: np.ndarray
    vectors: np.ndarray
    gone: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    _wide: np.ndarray | None = None  # float32 copy for products, made on first search

    @classmethod
    def empty(cls, dim: int) -> Delta:
        return cls(np.zeros(0, np.int64), np.zeros((0, dim), np.float16))

    def __len__(self) -> int:
        return len(self.keys)

    def changed(self, keys: np.ndarray, vectors: np.ndarray, gone: np.ndarray,
                main: np.ndarray) -> Delta:
        """A new delta: these vectors added (replacing any under the same keys), ``gone``
        removed; keys of ``main`` (the main index's, sorted) replaced or gone stop answering."""
        out = np.union1d(gone, keys)
        keep = ~np.isin(self.keys, out)
        order = np.argsort(np.concatenate([self.keys[keep], keys]), kind="stable")
        merged_keys = np.concatenate([self.keys[keep], keys])[order]
        merged = np.concatenate([self.vectors[keep], np.asarray(vectors, np.float16)])[order]
        hidden = np.union1d(self.gone, out[np.isin(out, main)])
        return Delta(merged_keys, merged, hidden)

    def search(self, queries: np.ndarray, k: int, within: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Exact (scores, keys) of the ``k`` nearest, keys -1 past the end."""
        if self._wide is None:
            self._wide = self.vectors.astype(np.float32)
        vectors, keys = self._wide, self.keys
        if within is not None:
            mask = np.isin(keys, within)
            vectors, keys = vectors[mask], keys[mask]
        if not len(keys):
            shape = (len(queries), k)
            return np.full(shape, -np.inf, np.float32), np.full(shape, -1, np.int64)
        return exact.top(queries, vectors, keys, k)

    def pairs(self, queries: np.ndarray, keys: np.ndarray, threshold: float
              ) -> Iterator[tuple[int, int, float]]:
        """Every (smaller key, larger key, score) at or above ``threshold`` between these
        queries and the delta's vectors (not a query with itself)."""
        for start in range(0, len(self.keys), PAIR_ROWS):
            block = self.vectors[start:start + PAIR_ROWS].astype(np.float32)
            scores = queries @ block.T
            rows, cols = np.nonzero(scores >= threshold)
            found = self.keys[start + cols]
            for a, b, score in zip(keys[rows], found, scores[rows, cols], strict=True):
                if a != b:
                    yield int(min(a, b)), int(max(a, b)), min(float(score), 1.0)

    def save(self, path: Path) -> None:
        with open(path, "wb") as file:
            np.savez(file, keys=self.keys, vectors=self.vectors, gone=self.gone)
            file.flush()
            os.fsync(file.fileno())

    @classmethod
    def load(cls, path: Path) -> Delta:
        with np.load(path) as stored:
            return cls(stored["keys"], stored["vectors"], stored["gone"])


def merge(first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray],
          k: int) -> tuple[np.ndarray, np.ndarray]:
    """Two (scores, keys) answers as one, best first, ``k`` wide (keys -1 past the end)."""
    scores = np.concatenate([first[0], second[0]], axis=1)
    keys = np.concatenate([first[1], second[1]], axis=1)
    scores = np.where(keys == -1, -np.inf, scores)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(keys, order, 1)
