"""The loop over one chunk's images, one way: prepare (elsewhere) -> dedupe -> finish -> score.

Fetching, hashing and decoding happen in the decode processes (worker/prep); this process
receives each image's content hash and pixels (or its failure), looks up content already
tagged, finishes decoding on the model's device (nvJPEG), hands the batch to the forward
thread (worker/loop/batcher.py), and scores what comes back against the chunk's label set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worker.backends import Backend
from worker.core.contract import Item
from worker.core.embedding import damaged
from worker.core.errors import ItemError, Reason, TransientError
from worker.decoders import Decoder, OnCpu, fallback_of
from worker.loop.batcher import Batcher
from worker.loop.dedupe import KnownContent, Labels
from worker.loop.labelstore import Scoring
from worker.loop.scores import top_labels
from worker.prep import Check, Checked, Prepared
from worker.prep.pool import PrepPool
from worker.sources import check_uri

log = logging.getLogger(__name__)


@dataclass
class Work:
    """One item on its way through the loop."""

    item: Item
    sha256: str | None = None
    prepared: Any = None
    labels: Labels | None = None
    error: ItemError | None = None
    transient: TransientError | None = None  # to be tried again in a later delivery
    embedding: np.ndarray | None = None  # computed here by the image tower: kept (float32, (D,))
    kept: bool = False  # scored from a kept embedding: checked as for a fetch, not fetched


@dataclass
class Batch:
    """Distinct contents on their way through the forward thread, and the works of each."""

    shas: list[str]
    works: dict[str, list[Work]]
    embeddings: Future[np.ndarray] | None = None


class Tagger:
    """The loop over one chunk's images, handed its parts: it builds none of them."""

    def __init__(self, backend: Backend, decoder: Decoder, prep: PrepPool, batcher: Batcher,
                 known: KnownContent, top_k: int, group: int) -> None:
        """``group``: images handed on to be finished and encoded together, as soon as that
        many are decoded (the forward thread packs groups of every chunk into its batches)."""
        self.backend = backend
        self.decoder = decoder
        self.prep = prep
        self.batcher = batcher
        self.known = known
        self.top_k = top_k  # labels stored per image
        self.group = group

    def tag(self, items: Sequence[Item], scoring: Scoring, roots: tuple[Path, ...],
            final: bool) -> tuple[list[Work], dict[str, float]]:
        """Every item's labels or error. ``roots``: the folders files may be read from;
        ``final``: the last try, where a transient error becomes the item's failure."""
        started, forward = time.perf_counter(), self.batcher.forward_seconds
        works = [Work(item) for item in items]
        kept = self._kept(works)
        batches, ready, checked = [], [], []
        for prepared in self.prep.prepare(self._requests(works, kept), roots):
            work = works[prepared.index]
            if isinstance(prepared.outcome, Checked):
                checked.append(prepared.index)
            elif self._received(work, prepared, final):
                ready.append(work)
            if len(ready) >= self.group:
                batches.append(self._start(ready, scoring))
                ready = []
        if ready:
            batches.append(self._start(ready, scoring))
        prepared_at = time.perf_counter()
        self._score_kept(works, {i: kept[i] for i in checked}, scoring)
        for batch in batches:
            self._score(batch, scoring)
        _same_outcome_for_same_content(works)
        _return_freed_memory()
        ended = time.perf_counter()
        # With several chunks in flight, forward passes are shared: "forward" is the time
        # the tower ran while this chunk was being tagged.
        return works, {"prepare": prepared_at - started, "score": ended - prepared_at,
                       "forward": self.batcher.forward_seconds - forward,
                       "total": ended - started}

    def _kept(self, works: list[Work]) -> dict[int, tuple[str, np.ndarray]]:
        """The items sent with a content hash (the producer found it kept) that can be scored
        from a kept embedding: index -> (content, embedding). A message is never believed: the
        item's own latest fetch, of its version, must have found that content."""
        claimed = [w for w in works if w.item.sha256]
        if not claimed:
            return {}
        fetched = self.known.fetched(w.item for w in claimed)
        confirmed = {i: w.item.sha256 for i, w in enumerate(works)
                     if w.item.sha256 and fetched.get(w.item.uri) == w.item.sha256}
        vectors = self.known.embeddings(set(confirmed.values()))
        for index, sha in confirmed.items():
            if sha in vectors.corrupt:  # this image alone fails
                works[index].sha256 = sha
                works[index].error = damaged(sha, vectors.corrupt[sha])
        return {i: (sha, vectors[sha]) for i, sha in confirmed.items() if sha in vectors}

    def _score_kept(self, works: list[Work], kept: dict[int, tuple[str, np.ndarray]],
                    scoring: Scoring) -> None:
        """Items whose URIs passed the checks of a fetch are scored from their kept embedding."""
        if not kept:
            return
        for index, labels in zip(kept, top_labels(
                np.stack([vector for _, vector in kept.values()]), scoring.labelset,
                scoring.texts, self.backend.logit_scale, self.top_k), strict=True):
            work = works[index]
            work.sha256, work.labels, work.kept = kept[index][0], labels, True

    @staticmethod
    def _requests(works: list[Work], kept: dict[int, tuple[str, np.ndarray]]
                  ) -> list[tuple[int, str | bytes | Check]]:
        """What the decode processes are asked: to fetch each item, or, for one a kept
        embedding scores, to make the same checks without fetching it."""
        todo: list[tuple[int, str | bytes | Check]] = []
        for index, work in enumerate(works):
            if work.error is not None:  # its kept embedding is damaged
                continue
            try:
                check_uri(work.item.uri)
                todo.append((index, Check(work.item.uri) if index in kept else work.item.uri))
            except ItemError as exc:
                work.error = exc
        return todo

    @staticmethod
    def _received(work: Work, prepared: Prepared, final: bool) -> bool:
        """Take one answer from a decode process; True if the image is ready to score."""
        work.sha256 = prepared.sha256
        outcome = prepared.outcome
        if isinstance(outcome, TransientError):
            if final:
                work.error = ItemError(Reason.TRANSIENT, f"gave up after the last retry: "
                                       f"{outcome}")
            else:
                work.transient = outcome
        elif isinstance(outcome, ItemError):
            work.error = outcome
        else:
            work.prepared = outcome
            return True
        return False

    def _start(self, ready: list[Work], scoring: Scoring) -> Batch:
        """Known contents take their labels; the rest (each content once) go to the model."""
        found = self.known.lookup(scoring.labelset.id, {w.sha256 for w in ready if w.sha256})
        batch = Batch(shas=[], works={})
        for work in ready:
            sha = work.sha256 or ""
            if sha in found:
                work.labels, work.prepared = found[sha], None
            elif sha not in batch.works:
                batch.works[sha] = [work]
                batch.shas.append(sha)
            else:
                batch.works[sha].append(work)
        pixels = self._finish([batch.works[sha][0].prepared for sha in batch.shas])
        for sha, outcome in zip(list(batch.shas), pixels, strict=True):
            if isinstance(outcome, ItemError):
                for work in batch.works.pop(sha):
                    work.error = outcome
                batch.shas.remove(sha)
        kept = [p for p in pixels if not isinstance(p, ItemError)]
        batch.embeddings = self.batcher.submit(kept)
        for works in batch.works.values():
            for work in works:
                work.prepared = None  # the pixels are the batcher's now
        return batch

    def _finish(self, prepared: list[Any]) -> list[Any]:
        """The decoder's last step; images it hands back go to a decode process for its
        fallback decoder."""
        spec = self.backend.preprocess
        out = self.decoder.finish(prepared, spec)
        back = [(i, p.data) for i, p in enumerate(out) if isinstance(p, OnCpu)]
        if back:
            fallback = fallback_of(self.decoder.name)  # as its registration declares
            answers = {a.index: a.outcome for a in self.prep.prepare(back, decoder=fallback)}
            again = self.decoder.finish([answers[i] for i, _ in back], spec)
            for (i, _), pixels in zip(back, again, strict=True):
                out[i] = pixels
        return out

    def _score(self, batch: Batch, scoring: Scoring) -> None:
        """Labels for each content of the batch: softmax over the label set, top-k."""
        if not batch.shas or batch.embeddings is None:
            return
        embeddings = batch.embeddings.result()
        scored = top_labels(embeddings, scoring.labelset, scoring.texts,
                            self.backend.logit_scale, self.top_k)
        for sha, labels, embedding in zip(batch.shas, scored, embeddings, strict=True):
            self.known.remember(scoring.labelset.id, sha, labels)
            for work in batch.works[sha]:
                work.labels, work.embedding = labels, embedding

    def close(self) -> None:
        self.batcher.close()
        self.prep.close()
        self.decoder.close()


def _same_outcome_for_same_content(works: list[Work]) -> None:
    """Identical bytes under several URIs end alike: labels if any copy got them (a copy that
    ran out of time under load is no reason to fail the others), else the first copy's error."""
    labels: dict[str, Labels] = {}
    errors: dict[str, ItemError] = {}
    for work in works:
        if work.sha256 and work.labels is not None:
            labels.setdefault(work.sha256, work.labels)
        elif work.sha256 and work.error is not None:
            errors.setdefault(work.sha256, work.error)
    for work in works:
        if not work.sha256 or work.transient is not None:
            continue
        if work.sha256 in labels:
            work.labels, work.error = labels[work.sha256], None
        elif work.sha256 in errors:
            work.error = errors[work.sha256]


def _return_freed_memory() -> None:
    """Hand freed buffers back to the OS, so the worker's RSS stays flat.

    Each thread gets its own glibc malloc arena; image-sized buffers leave them fragmented and
    glibc only returns memory at the top of a heap, so RSS creeps up chunk after chunk.
    malloc_trim(0) releases the free pages of every arena.
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
