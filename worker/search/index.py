"""The nearest-neighbour index over kept embeddings (faiss): exact below EXACT_BELOW, HNSW above,
with a delta of what changed since (delta.py) searched beside it.

Both kinds store the float16 values as they are kept (faiss's fp16 scalar quantiser, exact for
them) under the embeddings' own int64 keys. Below EXACT_BELOW a flat index scans every vector
(2 ms a query at 20,000 here). Above it, a graph (HNSW, M links per vector): a query visits a
few thousand vectors, whatever the size. Chosen over an inverted file by measurement
(docs/performance.md): at 1,000,000 an IVF reached recall@10 0.95 only by scanning 128 MB a
query (55 ms here), and over usearch's graph for adding (faiss's took a third of the time on
the same vectors). On disk a snapshot is the main index's file, its keys, and a small delta
file, named by generations; a pointer file (``<name>.json``) replaced atomically names them:
a reader never pairs an old index with new keys, and adding writes a new delta, not the index.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from worker.search import delta as deltas
from worker.search import exact
from worker.search.delta import Delta, merge

EXACT_BELOW = 20_000  # kept embeddings at or above which the main index is a graph
LINKS = 16  # HNSW's M: links per vector (32 on the lowest level)
EF_BUILD = 40  # candidates kept while linking a new vector
EF_SEARCH = 64  # candidates kept while searching (at least k)
# A text sits far from every image (CLIP's modality gap), where a graph has less to go by:
# twice the candidates (~0.5 ms more at 1,000,000 here) for recall like an image's.
EF_TEXT = 128
PAIR_NEIGHBOURS = 10  # nearest looked at per image for duplicates
CORES = os.cpu_count() or 1
BLOCK = 20_000  # vectors reconstructed at a time (filtered searches, duplicates)
faiss.omp_set_num_threads(CORES)


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """faiss's OpenMP threads for a call: one for a single query (with two, on a busy 2-core
    machine, a 5,000-vector scan took 16 ms instead of 0.5), every core for batches."""
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(CORES)


def _main(dim: int, graph: bool) -> Any:
    fp16, ip = faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    if not graph:
        return faiss.IndexIDMap(faiss.IndexScalarQuantizer(dim, fp16, ip))
    hnsw = faiss.IndexHNSWSQ(dim, fp16, LINKS, ip)
    hnsw.hnsw.efConstruction = EF_BUILD
    return faiss.IndexIDMap(hnsw)


@dataclass
class Index:
    """One snapshot: the main faiss index, the delta beside it and what they were built as."""

    main: Any
    delta: Delta
    meta: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None  # the file the main index was mapped from, if it was
    _order: tuple[np.ndarray, np.ndarray] | None = None  # main's keys sorted, their positions
    _keys: np.ndarray | None = None

    @property
    def kind(self) -> str:
        return str(self.meta["kind"])

    @property
    def keys(self) -> np.ndarray:
        """Every key a search can answer with, sorted."""
        if self._keys is None:
            live = self.main_keys()[~np.isin(self.main_keys(), self.delta.gone)]
            self._keys = np.union1d(live, self.delta.keys)
        return self._keys

    @property
    def count(self) -> int:
        """Keys a search can answer with: the delta's are never the main index's, and the keys
        gone are all the main index's (Delta.changed)."""
        return int(self.main.ntotal) - len(self.delta.gone) + len(self.delta)

    def main_keys(self) -> np.ndarray:
        if self._order is None:
            ids = faiss.vector_to_array(self.main.id_map).astype(np.int64)
            at = np.argsort(ids, kind="stable")
            self._order = (ids[at], at)
        return self._order[0]

    @classmethod
    def empty(cls, dim: int, count: int) -> Index:
        """A new index for about ``count`` vectors: flat (exact) below EXACT_BELOW."""
        graph = count >= EXACT_BELOW
        return cls(_main(dim, graph), Delta.empty(dim),
                   {"kind": "hnsw" if graph else "flat", "dim": dim, "sized_for": count})

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Into the main index (building; updates go to the delta: ``change``)."""
        with threads(CORES):
            for start in range(0, len(keys), 65_536):
                block = np.asarray(vectors[start:start + 65_536], np.float32)
                self.main.add_with_ids(block, np.asarray(keys[start:start + 65_536], np.int64))
        self._order = self._keys = None

    def writable(self) -> None:
        """A main index of this snapshot's own, to be added to: read whole from its file (a
        mapped one cannot be) or copied (other threads may be searching the one it shares)."""
        if self.source is not None:
            self.main = faiss.read_index(str(self.source))
        else:
            self.main = faiss.clone_index(self.main)
        self.source = None

    def change(self, keys: np.ndarray, vectors: np.ndarray, gone: np.ndarray) -> None:
        """New vectors (replacing any under the same keys) and keys gone, into the delta;
        folded into the main index once the delta holds more than FOLD_AT."""
        self.delta = self.delta.changed(keys, vectors, gone, self.main_keys())
        self._keys = None
        if len(self.delta) > deltas.FOLD_AT:
            if np.isin(self.delta.keys, self.delta.gone).any():  # a removed key kept again
                self.meta["clash"] = True  # the main index would hold it twice: rebuilt
            self.add(self.delta.keys, self.delta.vectors)
            self.delta = Delta(self.delta.keys[:0], self.delta.vectors[:0], self.delta.gone)
            self.meta["folded"] = True

    def outgrown(self) -> bool:
        """Past what its kind was chosen for, or hiding many removed keys: rebuilt instead."""
        if self.meta.get("clash") or len(self.delta.gone) > max(1000, self.count // 10):
            return True
        if self.kind == "flat":
            return self.count >= 2 * EXACT_BELOW
        return self.count < EXACT_BELOW // 2

    def search(self, queries: np.ndarray, k: int, within: np.ndarray | None = None,
               ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, keys) of the ``k`` nearest, best first (key -1: none). ``within``: only
        these keys, then searched exactly over them, however few they are. ``ef``: the
        candidates a graph search keeps (EF_SEARCH unless given)."""
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        k = max(1, min(k, self.count))
        if within is not None:
            found = self._exact(queries, k, np.asarray(within, np.int64))
        else:
            found = self._nearest(queries, k, ef)
        found = merge(found, self.delta.search(queries, k, within), k)
        return np.minimum(found[0], 1.0), found[1]

    def _nearest(self, queries: np.ndarray, k: int, ef: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        gone = faiss.IDSelectorBatch(self.delta.gone) if len(self.delta.gone) else None
        skip = faiss.IDSelectorNot(gone) if gone is not None else None  # held: faiss borrows
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(ef or EF_SEARCH, k), sel=skip)
        else:
            params = faiss.SearchParameters(sel=skip) if skip is not None else None
        with threads(1 if len(queries) == 1 else CORES):
            return self.main.search(queries, min(k, max(int(self.main.ntotal), 1)),
                                    params=params)

    def _exact(self, queries: np.ndarray, k: int, within: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        wanted = np.intersect1d(within, self.main_keys())
        wanted = wanted[~np.isin(wanted, self.delta.gone)]
        best = (np.full((len(queries), 0), -np.inf, np.float32), np.zeros((len(queries), 0),
                                                                          np.int64))
        for start in range(0, len(wanted), BLOCK):
            keys = wanted[start:start + BLOCK]
            best = merge(best, exact.top(queries, self.vectors(keys), keys, k), k)
        return best

    def vectors(self, keys: np.ndarray) -> np.ndarray:
        """The main index's float32 vectors of these keys (which it must hold)."""
        sorted_keys, at = self.main_keys(), self._order[1]  # type: ignore[index]
        positions = at[np.searchsorted(sorted_keys, keys)]
        return self.main.index.reconstruct_batch(positions.astype(np.int64))

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every (keys, float32 vectors) searched, a block at a time: the main index's in its
        own order (no database read), then the delta's."""
        ids = faiss.vector_to_array(self.main.id_map).astype(np.int64)
        for start in range(0, len(ids), BLOCK):
            keys = ids[start:start + BLOCK]
            vectors = self.main.index.reconstruct_n(start, len(keys))
            live = ~np.isin(keys, self.delta.gone)
            yield keys[live], vectors[live]
        if len(self.delta):
            yield self.delta.keys, self.delta.vectors.astype(np.float32)

    def pairs(self, queries: np.ndarray, keys: np.ndarray, threshold: float
              ) -> Iterator[tuple[int, int, float]]:
        """Pairs (smaller key, larger key, score) at or above ``threshold``: every one where
        the main index is flat (a range search), among each query's PAIR_NEIGHBOURS nearest
        in a graph; a pair may come twice (found from both sides)."""
        queries, keys = np.asarray(queries, np.float32), np.asarray(keys, np.int64)
        if self.kind == "flat":
            with threads(CORES):
                lims, scores, found = self.main.range_search(
                    queries, float(np.nextafter(threshold, -1)))
            rows = np.repeat(np.arange(len(queries)), np.diff(lims).astype(np.int64))
        else:
            wide_scores, wide = self._nearest(queries, PAIR_NEIGHBOURS + 1)
            rows, cols = np.nonzero(wide_scores >= threshold)
            scores, found = wide_scores[rows, cols], wide[rows, cols]
        yield from _pairs(keys[rows], found, scores, self.delta.gone)
        yield from self.delta.pairs(queries, keys, threshold)

    def save(self, folder: Path, name: str, main: bool = True) -> None:
        """Write the delta (and, with ``main``, the main index) as new generations, then point
        ``<name>.json`` at them; older files are removed."""
        from worker.search.snapshot import save

        self.meta = save(self, folder, name, main)

    @classmethod
    def load(cls, folder: Path, name: str, reuse: Index | None = None) -> Index | None:
        """The current snapshot, or None if there is none (or it is damaged). ``reuse``: a
        loaded snapshot whose main index is used again if the pointer still names it."""
        from worker.search.snapshot import load

        return load(cls, folder, name, reuse)

    @staticmethod
    def pointed(folder: Path, name: str) -> str | None:
        """What the pointer names now (another process may have saved a new generation)."""
        try:
            meta = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
            return f"{meta['index']} {meta.get('delta')}"
        except (OSError, ValueError, KeyError):
            return None

    def generation(self) -> str:
        return f"{self.meta.get('index')} {self.meta.get('delta')}"


def _pairs(keys: np.ndarray, found: np.ndarray, scores: np.ndarray, gone: np.ndarray
           ) -> Iterator[tuple[int, int, float]]:
    keep = (found != -1) & (found != keys) & ~np.isin(found, gone)
    for a, b, score in zip(keys[keep], found[keep], scores[keep], strict=True):
        yield int(min(a, b)), int(max(a, b)), min(float(score), 1.0)


def new_generation() -> str:
    return uuid.uuid4().hex[:12]
