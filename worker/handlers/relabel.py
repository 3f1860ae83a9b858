"""One relabel message: score a range of kept embeddings with a label set; nothing is fetched.

Read (a server-side cursor, in batches) -> score (float32 matrix products in blocks of labels)
-> write (COPY and one merge per batch, its own transaction). A re-delivered range writes the
same rows again (idempotent upserts); the range stops counting as pending only after its last
batch is written. Its deaths are counted as a chunk's are; an image whose kept embedding is
corrupt fails alone; a cancelled run's range stops after the batch it is writing.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import sqlalchemy as sa

from worker.core.contract import KEPT_RUNTIME, Span
from worker.core.embedding import damaged
from worker.core.errors import ConfigError
from worker.db import bulk, embeddings, writes
from worker.loop.assemble import Parts
from worker.loop.labelstore import Scoring
from worker.loop.scores import LabelsText, top_k

log = logging.getLogger(__name__)
BATCH = 5000  # images read, scored and written at a time: ~10 MB of float32 at 512 values


def relabel(parts: Parts, span: Span, task_id: str) -> dict[str, Any]:
    """Everything one relabel message asks for; returns what it did, with wall and CPU
    seconds per stage (the database server's CPU is not in it)."""
    scoring = _ready(parts, span, task_id)
    if not isinstance(scoring, Scoring):
        return scoring
    rendered, clock, images = LabelsText(scoring.labelset), Clock(), 0
    shared = shared_columns(span, parts.served.id)
    lines = bulk.Lines(shared, writes.SCORED)
    batches = embeddings.read_images(parts.engine, embeddings.Scope(parts.served, span.scope_run),
                                     span.lo, span.hi, BATCH, parts.read_timeout)
    while True:
        with clock.stage("read"):
            try:
                batch = next(batches, None)
            except ConfigError as exc:  # the read ran over TAGGER_READ_TIMEOUT: said, not retried
                return give_up(parts, span, task_id, str(exc))
        if batch is None:
            break
        with clock.stage("score"):
            rows = scored(parts, scoring, rendered, *batch)
        with clock.stage("write"):
            writes.write_scored(parts.engine, lines, shared, rows)
            if batch[2]:  # rare: each damaged embedding's image fails alone, and it goes
                writes.write_failed(parts.engine, shared, _failures(batch[0], batch[2]))
                embeddings.forget(parts.engine, parts.served,
                                  [batch[0][i].content_sha256 for i in batch[2]])
        images += len(batch[0])
        if writes.cancelled(parts.engine, span.run_id):  # `producer cancel`: stop here
            break
    writes.finish_range(parts.engine, span.run_id, span.lo, task_id)
    return {"images": images, **clock.report()}


def _ready(parts: Parts, span: Span, task_id: str) -> Scoring | dict[str, Any]:
    """The label set to score with, or what became of a range that is not to be scored."""
    if span.model != parts.model:
        return give_up(parts, span, task_id, f"relabel of model {span.model} was taken by a "
                       f"worker serving {parts.model}; start a worker with that TAGGER_MODEL "
                       "and run `producer relabel` again")
    delivery = writes.start_delivery(parts.engine, task_id, span.run_id, 0)
    if delivery.cancelled:  # withdrawn: nobody waits for it
        writes.finish_range(parts.engine, span.run_id, span.lo, task_id)
        return {"images": 0, "withdrawn": span.run_id}
    if delivery.deaths >= parts.max_deliveries:  # as a chunk is parked: never looped on
        return give_up(parts, span, task_id, f"relabel range {span.lo}..{span.hi} was "
                       f"delivered {delivery.starts} times without finishing (it killed its "
                       "worker: the worker's log says how); `producer relabel` redoes it")
    scoring = parts.labels.get(span.labelset_id)
    if scoring is None:
        return give_up(parts, span, task_id,
                       f"label set {span.labelset_id} is not in the results database")
    return scoring


def scored(parts: Parts, scoring: Scoring, rendered: LabelsText, found: list[sa.Row],
           vectors: np.ndarray, corrupt: dict[int, str]) -> list[tuple[Any, ...]]:
    """One batch's scored rows (an image's own columns as stored, the first six the read
    returns, then its labels); images whose kept embedding is corrupt are left out."""
    best = top_k(vectors, scoring.texts, parts.tagger.backend.logit_scale, parts.tagger.top_k)
    return [(*row[:6], *rendered.render(*top))
            for i, (row, top) in enumerate(zip(found, zip(*best, strict=True), strict=True))
            if i not in corrupt]


def _failures(found: list[sa.Row], corrupt: dict[int, str]) -> list[dict[str, Any]]:
    """The failed rows of images whose kept embedding is damaged (a failure never replaces a
    done result of the same label set)."""
    return [{**dict(zip(writes.SCORED[:6], found[i][:6], strict=True)),
             "error": str(error), "reason": error.reason.value}
            for i, error in ((i, damaged(found[i].content_sha256, problem))
                             for i, problem in corrupt.items())]


class Clock:
    """Wall and CPU seconds (the process's, with its BLAS threads) spent per stage."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - wall
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu

    def report(self) -> dict[str, dict[str, float]]:
        return {"wall": {k: round(v, 4) for k, v in self.wall.items()},
                "cpu": {k: round(v, 4) for k, v in self.cpu.items()}}


def shared_columns(span: Span, model_id: int) -> dict[str, Any]:
    """The columns every result of a range has: scored from a kept embedding, for its run."""
    return {"model": span.model, "model_id": model_id, "labelset_id": span.labelset_id,
            "status": "done", "reason": None, "error": None, "attempts": 1,
            "run_id": span.run_id, "runtime": KEPT_RUNTIME}


def give_up(parts: Parts, span: Span, task_id: str, error: str) -> dict[str, Any]:
    """The range is not scored: it stops counting as pending and its run says why."""
    log.error("relabel range %d..%d given up: %s", span.lo, span.hi, error)
    writes.finish_range(parts.engine, span.run_id, span.lo, task_id, error=error)
    return {"images": 0, "error": error}
