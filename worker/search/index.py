"""The nearest-neighbour index over kept embeddings (faiss): exact below EXACT_BELOW, IVF above.

Both kinds store the float16 values as they are kept (faiss's fp16 scalar quantiser, exact for
them) under the embeddings' own int64 keys. Below EXACT_BELOW a flat index scans every vector:
2 ms a query at 20,000 here, and exact. Above it, an inverted file (IVF) of
~2 sqrt(N) lists scans an eighth of them per query. Adding keeps the lists trained for N;
past GROWTH x N, a rebuild retrains them (keeper.py). On disk a snapshot is two files named
by a generation, and a pointer file (``<name>.json``) replaced atomically names the current one:
a reader never pairs an old index with new keys. faiss was chosen over usearch by measurement
(docs/performance.md): adding 10,000 vectors to usearch's HNSW took 51 s here, to the IVF 2.4 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

# Kept embeddings: at or above this, an IVF. A flat scan of 20,000 took 2 ms a query (one
# thread), of 50,000 12 ms; the IVF under 1 ms (docs/performance.md).
EXACT_BELOW = 20_000
# Lists scanned per query: an eighth of them, at least 32. On the benchmark's data (1M, 2,000
# lists) recall@10 was 0.83 at 32, 0.91 at 128, 0.95 at 256 (docs/performance.md).
NPROBE, PROBED_SHARE = 32, 8
PAIR_NPROBE = 4  # per image, for duplicates: near-copies share their nearest lists
TRAIN_PER_LIST = 40  # training vectors per list (faiss warns below 39)
GROWTH = 4  # an IVF that grew past 4x the vectors it was trained on is rebuilt
CORES = os.cpu_count() or 1


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """faiss's OpenMP threads for a call: one for a single query (with two, on a busy 2-core
    machine, a 5,000-vector scan took 16 ms instead of 0.5), every core for batches."""
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(CORES)


def lists_for(count: int) -> int:
    """2 sqrt(N): k-means costs grow with the square of the lists (training 2,000 for 1M takes
    minutes on 2 cores), queries with the vectors per list (500 at 1M)."""
    return max(1, int(2 * np.sqrt(count)))


def sample_size(count: int) -> int:
    """How many vectors an IVF for ``count`` is trained on (none for a flat index)."""
    return 0 if count < EXACT_BELOW else min(count, TRAIN_PER_LIST * lists_for(count))


faiss.omp_set_num_threads(CORES)


@dataclass
class Index:
    """One snapshot: the faiss index, its keys (sorted) and what it was built as."""

    index: Any
    keys: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.meta["kind"])

    @property
    def count(self) -> int:
        return len(self.keys)

    @classmethod
    def empty(cls, dim: int, count: int, sample: np.ndarray | None = None) -> Index:
        """A new index for about ``count`` vectors; an IVF's lists are trained on ``sample``
        (``sample_size(count)`` of them, drawn at random)."""
        fp16, ip = faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        if count < EXACT_BELOW or sample is None:
            flat = faiss.IndexIDMap2(faiss.IndexScalarQuantizer(dim, fp16, ip))
            return cls(flat, np.zeros(0, np.int64), {"kind": "flat", "dim": dim})
        lists = lists_for(count)
        ivf = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, lists, fp16, ip)
        ivf.by_residual = False  # codes are the kept float16 values themselves: exact scores
        ivf.cp.niter = 10  # k-means iterations: recall barely moves past 10 on CLIP-like data
        ivf.train(np.asarray(sample, np.float32))
        return cls(ivf, np.zeros(0, np.int64),
                   {"kind": "ivf", "dim": dim, "lists": lists, "sized_for": count})

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        for start in range(0, len(keys), 65_536):
            block = np.asarray(vectors[start:start + 65_536], np.float32)
            self.index.add_with_ids(block, keys[start:start + 65_536])
        self.keys = np.union1d(self.keys, keys)

    def remove(self, keys: np.ndarray) -> None:
        if len(keys):
            self.index.remove_ids(np.asarray(keys, np.int64))
            self.keys = np.setdiff1d(self.keys, keys)

    def outgrown(self) -> bool:
        """Past the size its kind or lists were chosen for: rebuilt rather than added to."""
        if self.kind == "flat":
            return self.count >= 2 * EXACT_BELOW
        return (self.count > GROWTH * int(self.meta["sized_for"])
                or self.count < EXACT_BELOW // 2)

    def search(self, queries: np.ndarray, k: int, within: np.ndarray | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, keys) of the ``k`` nearest, best first (key -1: none). ``within``: only
        these keys, then searched exhaustively (exact over them, however few they are)."""
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        params = self._params(within, nprobe)
        with threads(1 if len(queries) == 1 else CORES):
            scores, keys = self.index.search(queries, min(k, max(self.count, 1)),
                                             params=params)
        return np.minimum(scores, 1.0), keys

    def pairs(self, queries: np.ndarray, keys: np.ndarray, threshold: float,
              nprobe: int = PAIR_NPROBE) -> Iterable[tuple[int, int, float]]:
        """Pairs (smaller key, larger key, score) at or above ``threshold``; approximate: a pair
        may come twice (found from both sides) or, rarely, not at all."""
        lims, scores, found = self.index.range_search(
            np.asarray(queries, np.float32), float(np.nextafter(threshold, -1)),
            params=self._params(None, nprobe))
        for row, key in enumerate(keys):
            for at in range(lims[row], lims[row + 1]):
                if key != found[at]:
                    a, b = sorted((int(key), int(found[at])))
                    yield a, b, min(float(scores[at]), 1.0)

    def _params(self, within: np.ndarray | None, nprobe: int | None) -> Any:
        selector = None if within is None else faiss.IDSelectorBatch(
            np.asarray(within, np.int64))
        if self.kind == "ivf":
            nlist = self.index.nlist
            lists = nlist if within is not None else min(
                nprobe or max(NPROBE, nlist // PROBED_SHARE), nlist)
            return faiss.SearchParametersIVF(sel=selector, nprobe=lists)
        return faiss.SearchParameters(sel=selector) if selector is not None else None

    def save(self, folder: Path, name: str) -> None:
        """Write a new generation, then point ``<name>.json`` at it; older ones are removed."""
        folder.mkdir(parents=True, exist_ok=True)
        generation = uuid.uuid4().hex[:12]
        files = {"index": f"{name}-{generation}.faiss", "keys": f"{name}-{generation}.keys.npy"}
        faiss.write_index(self.index, str(folder / files["index"]))
        np.save(folder / files["keys"], self.keys)
        meta = {**self.meta, **files, "count": self.count}
        pointer = folder / f"{name}.json"
        temporary = folder / f".{name}.{generation}.json"
        temporary.write_text(json.dumps(meta), encoding="utf-8")
        for path in (folder / files["index"], folder / files["keys"], temporary):
            with open(path, "rb") as file:
                os.fsync(file.fileno())
        os.replace(temporary, pointer)
        self.meta = meta
        for old in folder.glob(f"{name}-*"):  # open (mapped) copies stay readable until closed
            if generation not in old.name:
                old.unlink(missing_ok=True)

    @classmethod
    def load(cls, folder: Path, name: str, writable: bool = False) -> Index | None:
        """The current snapshot (memory-mapped unless ``writable``), or None if there is none."""
        for _ in range(3):  # a writer may replace the generation between the reads below
            try:
                meta = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
                flags = 0 if writable else faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
                index = faiss.read_index(str(folder / meta["index"]), flags)
                keys = np.load(folder / meta["keys"])
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, RuntimeError):
                return None  # damaged: rebuilt by the keeper
            return cls(index, keys, meta)
        return None

    @staticmethod
    def pointed(folder: Path, name: str) -> str | None:
        """The index file of the current generation (another process may have saved one)."""
        try:
            return str(json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))["index"])
        except (OSError, ValueError, KeyError):
            return None
