"""The loop over one chunk's images, one way: fetch -> dedupe -> decode -> score."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worker import metrics
from worker.backends import Backend
from worker.core.contract import Item
from worker.core.errors import ItemError, Reason, TransientError
from worker.core.labels import LabelSet
from worker.core.pixels import Pixels
from worker.core.redact import redact
from worker.decoders import Decoder
from worker.dedupe import KnownContent
from worker.labelstore import Scoring
from worker.scores import top_labels
from worker.sources import Budget, Source, check_uri
from worker.turns import Turns

log = logging.getLogger(__name__)


@dataclass
class Work:
    """One item on its way through the loop."""

    item: Item
    sha256: str | None = None
    data: bytes | None = None
    pixels: Pixels | None = None
    labels: list[dict[str, Any]] | None = None
    error: ItemError | None = None
    embedding: np.ndarray | None = None  # computed here by the image tower: kept (float32, (D,))
    kept: bool = False  # scored from a kept embedding, nothing fetched


@dataclass(frozen=True)
class LoopOptions:
    """What the loop is told: fetch threads, each item's deadline, top-k, turn-taking."""

    fetch_threads: int
    item_timeout: float
    top_k: int
    take_turns: bool  # decoders and the model share CPU cores (worker/turns.py)


class Tagger:
    """The loop over one chunk's images, handed its parts: it builds none of them."""

    def __init__(self, backend: Backend, decoder: Decoder, sources: Callable[[str], Source],
                 known: KnownContent, options: LoopOptions) -> None:
        self.backend = backend
        self.decoder = decoder
        self.sources = sources
        self.known = known
        self.options = options
        self.fetchers = ThreadPoolExecutor(options.fetch_threads, thread_name_prefix="fetch")
        self.stages = ThreadPoolExecutor(4, thread_name_prefix="decode")
        self.turns = Turns(enabled=options.take_turns)

    # --- the loop -------------------------------------------------------------------------------

    def tag(self, items: Sequence[Item], scoring: Scoring, roots: tuple[Path, ...], final: bool
            ) -> tuple[list[Work], dict[str, float]]:
        """Fetch ahead in threads; decode one batch ahead of the one being scored.

        ``roots``: the folders files may be read from; ``final``: the last try, where a
        transient error becomes the item's failure instead of a retry of the chunk.
        """
        labelset, texts = scoring.labelset, scoring.texts
        timings = {"wait": 0.0, "forward": 0.0}
        started = time.perf_counter()
        works, items = self._score_kept(items, labelset, texts)
        ahead: Future[list[Work]] | None = None
        for group in self._batches(self._fetched(items, roots, final, timings)):
            works.extend(group)
            self._reuse_known(group, labelset.id)
            decoding = self.stages.submit(self._decode, group)
            if ahead is not None:
                timings["forward"] += self._score(ahead.result(), labelset, texts)
            ahead = decoding
        if ahead is not None:
            timings["forward"] += self._score(ahead.result(), labelset, texts)
        timings["total"] = time.perf_counter() - started
        _return_freed_memory()
        return works, timings

    def _score_kept(self, items: Sequence[Item], labelset: LabelSet, texts: np.ndarray
                    ) -> tuple[list[Work], list[Item]]:
        """Items sent with a content hash whose embedding is kept are scored from it, before
        anything is fetched; the rest (an embedding gone since) are left to fetch."""
        kept = self.known.embeddings(i.sha256 for i in items if i.sha256)
        works = [Work(i, sha256=i.sha256, kept=True) for i in items if i.sha256 in kept]
        if works:
            vectors = np.stack([kept[w.sha256 or ""] for w in works])
            for work, labels in zip(works, top_labels(vectors, labelset, texts,
                                                      self.backend.logit_scale,
                                                      self.options.top_k), strict=True):
                work.labels = labels
        return works, [i for i in items if i.sha256 not in kept]

    def _fetched(self, items: Sequence[Item], roots: tuple[Path, ...], final: bool,
                 timings: dict[str, float]) -> Iterator[Work]:
        """Fetch results in order, at most a few batches ahead (bounded memory)."""
        window = max(2 * self.backend.batch_size, self.options.fetch_threads)
        futures: list[Future[Work]] = []
        queue = iter(items)
        try:
            for item in queue:
                futures.append(self.fetchers.submit(self._fetch, item, roots, final))
                if len(futures) >= window:
                    yield self._wait(futures.pop(0), timings)
            while futures:
                yield self._wait(futures.pop(0), timings)
        finally:
            for future in futures:
                future.cancel()

    @staticmethod
    def _wait(future: Future[Work], timings: dict[str, float]) -> Work:
        waited = time.perf_counter()
        work = future.result()
        timings["wait"] += time.perf_counter() - waited
        return work

    def _fetch(self, item: Item, roots: tuple[Path, ...], final: bool) -> Work:
        """One item's bytes, or its error (runs in a fetch thread)."""
        budget = Budget(time.monotonic() + self.options.item_timeout, roots)
        try:
            check_uri(item.uri)
            data = self.sources(item.uri).fetch(item.uri, budget)
            return Work(item, sha256=hashlib.sha256(data).hexdigest(), data=data)
        except ItemError as exc:
            return Work(item, error=exc)
        except TransientError as exc:
            if not final:
                raise
            return Work(item, error=ItemError(Reason.TRANSIENT,
                                              f"gave up after the last retry: {exc}"))
        except Exception as exc:  # a bug or an odd URI must not fail the item's neighbours
            log.warning("fetching %s failed: %r", redact(item.uri), exc)
            return Work(item, error=ItemError(Reason.INTERNAL_ERROR,
                                              f"{type(exc).__name__}: {exc}"))

    def _batches(self, works: Iterator[Work]) -> Iterator[list[Work]]:
        group: list[Work] = []
        for work in works:
            group.append(work)
            if sum(w.data is not None for w in group) >= self.backend.batch_size:
                yield group
                group = []
        if group:
            yield group

    def _reuse_known(self, group: list[Work], labelset_id: str) -> None:
        """Labels of content already tagged here or by any worker (same bytes, other URI)."""
        found = self.known.lookup(labelset_id, (w.sha256 for w in group if w.sha256))
        for work in group:
            if work.sha256 and work.error is None:
                work.labels = found.get(work.sha256)
                if work.labels is not None:
                    work.data = None

    def _decode(self, group: list[Work]) -> list[Work]:
        """Decode each distinct content of the group once; returns the works to score."""
        todo = list({w.sha256: w for w in group if w.data is not None}.values())
        if todo:
            with self.turns.decoding():
                decoded = self.decoder.decode([w.data for w in todo], self.backend.preprocess)
            for work, outcome in zip(todo, decoded, strict=True):
                if isinstance(outcome, ItemError):
                    work.error = outcome
                else:
                    work.pixels = outcome
        for work in group:
            work.data = None  # the bytes are done with: free them before the next batch
        return group

    def _score(self, group: list[Work], labelset: LabelSet, texts: np.ndarray) -> float:
        """Score the group's decoded images in one forward pass; returns seconds spent."""
        started = time.perf_counter()
        ready = [w for w in group if w.pixels is not None]
        if ready:
            embeddings = self._forward([w.pixels for w in ready])
            scored = top_labels(embeddings, labelset, texts, self.backend.logit_scale,
                                self.options.top_k)
            for work, labels, embedding in zip(ready, scored, embeddings, strict=True):
                work.labels, work.embedding = labels, embedding
                self.known.remember(labelset.id, work.sha256 or "", work.labels)
                work.pixels = None
        by_content = {w.sha256: w.labels for w in group if w.labels is not None}
        for work in group:  # identical bytes in one batch were scored once
            if work.labels is None and work.error is None:
                work.labels = by_content.get(work.sha256)
        elapsed = time.perf_counter() - started
        metrics.observe_batch(len(ready), elapsed)
        memory = self.backend.memory()
        if memory:
            metrics.observe_gpu_memory(*memory)
        return elapsed

    def _forward(self, pixels: list[Pixels]) -> np.ndarray:
        """Run the image tower; on out-of-memory, split the batch instead of failing it."""
        try:
            with self.turns.model():
                return self.backend.encode_images(pixels)
        except Exception as exc:
            if len(pixels) == 1 or not self.backend.is_out_of_memory(exc):
                raise
            self.backend.release_memory()
            half = len(pixels) // 2
            log.warning("out of memory at batch %d; splitting", len(pixels))
            return np.concatenate([self._forward(pixels[:half]), self._forward(pixels[half:])])

    def close(self) -> None:
        self.fetchers.shutdown(cancel_futures=True)
        self.stages.shutdown(cancel_futures=True)
        self.decoder.close()


def _return_freed_memory() -> None:
    """Hand freed buffers back to the OS, so the worker's RSS stays flat.

    Each thread gets its own glibc malloc arena; image-sized buffers leave them fragmented and
    glibc only returns memory at the top of a heap, so RSS creeps up chunk after chunk.
    malloc_trim(0) releases the free pages of every arena (a few ms per chunk).
    """
    if _libc is not None:
        _libc.malloc_trim(0)


def _load_libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (macOS, musl): nothing to trim
        return None


_libc = _load_libc()
