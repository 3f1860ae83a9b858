"""One relabel message: score a range of kept embeddings with a label set; nothing is fetched.

Read (a server-side cursor, in batches) -> score (float32 matrix products in blocks of labels)
-> write (through the sinks, a `Scored` batch at a time: the database's COPY and one merge per
batch, its own transaction; other sinks see each result). A re-delivered range writes the
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

from worker.core.contract import Span
from worker.core.embedding import damaged
from worker.core.errors import ConfigError
from worker.core.scored import LabelsText, Range, Scored
from worker.db import embeddings, writes
from worker.loop.assemble import Parts
from worker.loop.labelstore import Scoring
from worker.loop.scores import top_k
from worker.sinks import write_all

log = logging.getLogger(__name__)
BATCH = 5000  # images read, scored and written at a time: ~10 MB of float32 at 512 values


def relabel(parts: Parts, span: Span, task_id: str) -> dict[str, Any]:
    """Everything one relabel message asks for; returns what it did, with wall and CPU
    seconds per stage (the database server's CPU is not in it)."""
    scoring = _ready(parts, span, task_id)
    if not isinstance(scoring, Scoring):
        return scoring
    rendered, clock, images = LabelsText(scoring.labelset), Clock(), 0
    shared = Range(span.model, parts.served.id, parts.served.weights, span.labelset_id,
                   span.run_id)
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
            found = scored(parts, scoring, shared, rendered, *batch)
        with clock.stage("write"):
            write_all(parts.sinks, found)
            if found.failed:  # rare: each damaged embedding's image failed alone, and it goes
                embeddings.forget(parts.engine, parts.served,
                                  [batch[0][i].content_sha256 for i in found.failed])
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


def scored(parts: Parts, scoring: Scoring, shared: Range, rendered: LabelsText,
           found: list[sa.Row], vectors: np.ndarray, corrupt: dict[int, str]) -> Scored:
    """One batch scored (an image's own columns as stored: the first six the read returns);
    images whose kept embedding is corrupt fail alone."""
    best = top_k(vectors, scoring.texts, parts.tagger.backend.logit_scale, parts.tagger.top_k)
    failed = {i: damaged(found[i].content_sha256, problem) for i, problem in corrupt.items()}
    return Scored(shared, rendered, found, best, failed)


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


def give_up(parts: Parts, span: Span, task_id: str, error: str) -> dict[str, Any]:
    """The range is not scored: it stops counting as pending and its run says why."""
    log.error("relabel range %d..%d given up: %s", span.lo, span.hi, error)
    writes.finish_range(parts.engine, span.run_id, span.lo, task_id, error=error)
    return {"images": 0, "error": error}
