"""The chunk loop: fetch and decode ahead in threads, score in batches, write once, time stages."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worker import metrics, store
from worker.cores import Turns
from worker.decode import decode
from worker.errors import ItemError, TransientError
from worker.labels import LabelSet
from worker.settings import Settings
from worker.sources import fetch

log = logging.getLogger(__name__)
_KNOWN_CAPACITY = 20_000


@dataclass
class Prepared:
    """One item after fetch and decode: pixels to score, or the reason it failed."""

    item: dict[str, str]
    sha256: str | None = None
    pixels: np.ndarray | None = None
    error: ItemError | None = None
    labels: list[dict[str, Any]] | None = None


@dataclass
class ChunkReport:
    """What a chunk came to, returned by the task (small: it is logged, not stored)."""

    done: int = 0
    failed: int = 0
    parked: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"done": self.done, "failed": self.failed, "parked": self.parked,
                "timings": {k: round(v, 4) for k, v in self.timings.items()}}


class Tagger:
    """A loaded model, the label sets it has encoded, and the threads that fetch and decode."""

    def __init__(self, settings: Settings, scorer: Any) -> None:
        self.settings = settings
        self.scorer = scorer
        self.engine = store.engine_for(settings.database_url)
        self.pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        # On CPU the decoders and the model take turns on the cores (see worker/cores.py).
        overlap, on_cpu = settings.decode_overlap, scorer.device.type == "cpu"
        self.turns = Turns(enabled=overlap == "off" or (overlap == "auto" and on_cpu))
        self._labelsets: dict[str, tuple[LabelSet, Any]] = {}
        # Labels of recently seen content, so identical bytes under many URIs are scored once.
        self._known: OrderedDict[tuple[str, str], list[dict[str, Any]]] = OrderedDict()

    # --- label sets ---------------------------------------------------------------------------

    def labelset(self, labelset_id: str) -> tuple[LabelSet, Any]:
        """The label set and its text embeddings on the device, computed once per process."""
        if labelset_id not in self._labelsets:
            labelset = store.load_labelset(self.engine, labelset_id)
            if labelset is None:
                raise TransientError(f"label set {labelset_id} is not in the database (yet)")
            self._labelsets[labelset_id] = (labelset, self.scorer.to_device(self.embed(labelset)))
        return self._labelsets[labelset_id]

    def embed(self, labelset: LabelSet) -> np.ndarray:
        """Text embeddings from the database cache, or computed here and cached for the fleet."""
        cached = store.load_text_embeddings(self.engine, self.settings.model, labelset.id)
        if cached:
            rows, dim, data = cached
            return np.frombuffer(data, dtype=np.float32).reshape(rows, dim).copy()
        started = time.perf_counter()
        embeddings = np.ascontiguousarray(self.scorer.encode_texts(labelset.prompts()),
                                          dtype=np.float32)
        log.info("encoded %d labels x %d templates in %.1fs", len(labelset.labels),
                 len(labelset.templates), time.perf_counter() - started)
        store.save_text_embeddings(self.engine, self.settings.model, labelset.id,
                                   *embeddings.shape, embeddings.tobytes())
        return embeddings

    # --- one chunk ----------------------------------------------------------------------------

    def prepare(self, item: dict[str, str], final: bool) -> Prepared:
        """Fetch and decode one item (runs in a decode thread)."""
        s = self.settings
        try:
            data = fetch(item["uri"], max_bytes=s.max_image_bytes, timeout=s.fetch_timeout,
                         allow_private=s.allow_private_urls,
                         allow_networks=s.url_allow_networks, pool=2 * s.decode_threads)
            sha = hashlib.sha256(data).hexdigest()
            try:
                with self.turns.decoding():
                    pixels = decode(data, self.scorer.preprocess,
                                    max_pixels=s.max_image_pixels, draft=s.jpeg_draft)
            except ItemError as exc:
                return Prepared(item, sha256=sha, error=exc)
            return Prepared(item, sha256=sha, pixels=pixels)
        except ItemError as exc:
            return Prepared(item, error=exc)
        except TransientError as exc:
            if not final:
                raise
            return Prepared(item, error=ItemError("transient", f"gave up after retries: {exc}"))

    def tag(self, items: Sequence[dict[str, str]], labelset_id: str, final: bool = False
            ) -> tuple[list[Prepared], dict[str, float]]:
        """Tag a chunk: decode ahead in threads while batches run through the model."""
        labelset, texts = self.labelset(labelset_id)
        timings = {"wait": 0.0, "forward": 0.0}
        prepared: list[Prepared] = []
        batch: list[Prepared] = []
        started = time.perf_counter()
        for ready in self._ahead(items, final, timings):
            prepared.append(ready)
            if ready.pixels is not None:
                batch.append(ready)
            if len(batch) >= self.scorer.batch_size:
                timings["forward"] += self._score(batch, labelset, texts)
                batch = []
        if batch:
            timings["forward"] += self._score(batch, labelset, texts)
        timings["total"] = time.perf_counter() - started
        _return_freed_memory()
        return prepared, timings

    def _ahead(self, items: Sequence[dict[str, str]], final: bool,
               timings: dict[str, float]) -> Iterator[Prepared]:
        futures = [self.pool.submit(self.prepare, item, final) for item in items]
        try:
            for future in futures:
                waited = time.perf_counter()
                result = future.result()
                timings["wait"] += time.perf_counter() - waited
                yield result
        finally:
            for future in futures:
                future.cancel()

    def _score(self, batch: list[Prepared], labelset: LabelSet, texts: Any) -> float:
        """Score a batch, running the model once per distinct content; returns seconds spent."""
        started = time.perf_counter()
        self._reuse_known(batch, labelset.id)
        todo: dict[str, list[Prepared]] = {}
        for p in batch:
            if p.labels is None:
                todo.setdefault(p.sha256 or "", []).append(p)
        if todo:
            pixels = [group[0].pixels for group in todo.values()]
            for (sha, group), scores in zip(todo.items(), self._forward(pixels, texts),
                                            strict=True):
                labels = label_scores(labelset, scores.indices, scores.scores)
                self._known[(labelset.id, sha)] = labels
                for p in group:
                    p.labels = labels
        for p in batch:
            p.pixels = None  # free the memory as soon as the batch is scored
        elapsed = time.perf_counter() - started
        metrics.observe_batch(len(todo), elapsed)
        memory = self.scorer.gpu_memory()
        if memory:
            metrics.observe_gpu_memory(*memory)
        return elapsed

    def _reuse_known(self, batch: list[Prepared], labelset_id: str) -> None:
        """Fill in labels for content already tagged here or by any worker (same bytes)."""
        missing = [p.sha256 for p in batch
                   if p.sha256 and (labelset_id, p.sha256) not in self._known]
        for sha, labels in store.done_by_content(self.engine, self.settings.model, labelset_id,
                                                 missing).items():
            self._known[(labelset_id, sha)] = labels
        for p in batch:
            p.labels = self._known.get((labelset_id, p.sha256 or ""))
        while len(self._known) > _KNOWN_CAPACITY:
            self._known.popitem(last=False)

    def _forward(self, pixels: list[np.ndarray], texts: Any) -> list[Any]:
        """Run the image tower; on out-of-memory, split the batch instead of failing it."""
        try:
            with self.turns.model():
                images = self.scorer.encode_images(np.stack(pixels))
                return self.scorer.score(images, texts, self.settings.top_k)
        except Exception as exc:
            if len(pixels) == 1 or not self.scorer.is_out_of_memory(exc):
                raise
            self.scorer.empty_cache()
            half = len(pixels) // 2
            log.warning("out of memory at batch %d; splitting", len(pixels))
            return self._forward(pixels[:half], texts) + self._forward(pixels[half:], texts)


def _return_freed_memory() -> None:
    """Hand the decoders' freed buffers back to the OS, so the worker's RSS stays flat.

    Each decode thread gets its own glibc malloc arena; multi-megapixel decodes leave them
    fragmented and glibc only returns memory at the top of a heap, so RSS creeps up chunk after
    chunk. malloc_trim(0) releases the free pages of every arena (a few ms per chunk).
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


def label_scores(labelset: LabelSet, indices: Sequence[int], scores: Sequence[float]
                 ) -> list[dict[str, Any]]:
    """The stored form of one image's top-k: highest score first, parents where there are any."""
    out = []
    for index, score in zip(indices, scores, strict=True):
        entry: dict[str, Any] = {"label": labelset.labels[index], "score": round(float(score), 6)}
        if labelset.parents[index]:
            entry["parent"] = labelset.parents[index]
        out.append(entry)
    return out


def result_rows(prepared: Sequence[Prepared], *, model: str, labelset_id: str,
                run_id: str | None, attempts: int) -> list[dict[str, Any]]:
    """Turn prepared items into rows for store.write_results."""
    rows = []
    for p in prepared:
        labels = p.labels or []
        failed = p.error is not None
        rows.append({
            "uri": p.item["uri"], "model": model, "labelset_id": labelset_id,
            "item_key": p.item.get("key"), "source_version": p.item.get("version"),
            "content_sha256": p.sha256, "status": "failed" if failed else "done",
            "reason": p.error.reason if failed else None,
            "error": str(p.error) if failed else None,
            "labels": labels, "top_label": labels[0]["label"] if labels else None,
            "top_score": labels[0]["score"] if labels else None,
            "attempts": attempts, "run_id": run_id,
        })
    return rows


def fail_chunk(tagger: Tagger, items: Sequence[dict[str, str]], *, labelset_id: str,
               run_id: str | None, reason: str, message: str, attempts: int = 1) -> ChunkReport:
    """Record every item of a chunk as failed with one reason (parked, timed out, crashed)."""
    error = ItemError(reason, message)
    rows = result_rows([Prepared(item, error=error) for item in items], model=tagger.settings.model,
                       labelset_id=labelset_id, run_id=run_id, attempts=attempts)
    store.write_results(tagger.engine, rows)
    metrics.observe_results(rows)
    return ChunkReport(failed=len(rows), parked=reason == "parked")


def run_chunk(tagger: Tagger, *, task_id: str, items: Sequence[dict[str, str]],
              labelset_id: str, run_id: str | None, retries: int, final: bool) -> ChunkReport:
    """Everything one chunk message asks for: count the delivery, tag, write once."""
    model = tagger.settings.model
    deliveries = store.count_delivery(tagger.engine, task_id)
    # Retries start the message again on purpose; only starts beyond those are deaths.
    if deliveries - retries > tagger.settings.max_deliveries:
        log.error("parking chunk after %d deliveries (%d items)", deliveries, len(items))
        return fail_chunk(tagger, items, labelset_id=labelset_id, run_id=run_id,
                          reason="parked", attempts=deliveries,
                          message=f"chunk was delivered {deliveries} times without finishing "
                                  "(it kills its worker?); retry alone with `producer "
                                  "retry-failed --reason parked --chunk-size 1`")
    prepared, timings = tagger.tag(items, labelset_id, final=final)
    rows = result_rows(prepared, model=model, labelset_id=labelset_id, run_id=run_id,
                       attempts=deliveries)
    started = time.perf_counter()
    store.write_results(tagger.engine, rows)
    timings["write"] = time.perf_counter() - started
    metrics.observe_results(rows)
    metrics.observe_timings(timings)
    failed = sum(r["status"] == "failed" for r in rows)
    return ChunkReport(done=len(rows) - failed, failed=failed, timings=timings)


_tagger: Tagger | None = None


def current_tagger(settings: Settings) -> Tagger:
    """The process's Tagger, built on first use (in the worker child, never before fork)."""
    global _tagger
    if _tagger is None:
        from worker.model import Scorer  # torch loads here, in the child process

        scorer = Scorer(settings.model, settings.device, settings.dtype, settings.batch_size)
        _tagger = Tagger(settings, scorer)
    return _tagger
