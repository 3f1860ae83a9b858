"""One relabel message: score a range of kept embeddings with a label set; nothing is fetched.

Read (a server-side cursor, in batches) -> score (one float32 matrix product per batch) ->
write (COPY and one merge per batch, its own transaction). A re-delivered range writes the
same rows again (idempotent upserts); the range stops counting as pending only after its last
batch is written.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from worker.core.contract import KEPT_RUNTIME, Span
from worker.core.errors import ConfigError
from worker.db import bulk, embeddings, writes
from worker.loop.assemble import Parts
from worker.loop.scores import LabelsText, top_k

log = logging.getLogger(__name__)
BATCH = 5000  # images read, scored and written at a time: ~10 MB of float32 at 512 values


def relabel(parts: Parts, span: Span, task_id: str) -> dict[str, Any]:
    """Everything one relabel message asks for; returns what it did, with wall and CPU
    seconds per stage (the database server's CPU is not in it)."""
    if span.model != parts.model:
        return give_up(parts, span, task_id, f"relabel of model {span.model} was taken by a "
                       f"worker serving {parts.model}; start a worker with that TAGGER_MODEL "
                       "and run `producer relabel` again")
    if writes.start_delivery(parts.engine, task_id, span.run_id, 0).cancelled:
        writes.write_results(parts.engine, [], task_id)  # withdrawn: nobody waits for it
        return {"images": 0, "withdrawn": span.run_id}
    scoring = parts.labels.get(span.labelset_id)
    if scoring is None:
        return give_up(parts, span, task_id,
                       f"label set {span.labelset_id} is not in the results database")
    backend, rendered = parts.tagger.backend, LabelsText(scoring.labelset)
    shared = shared_columns(span, parts.served.id)
    lines = bulk.Lines(shared, writes.SCORED)
    clock, images = Clock(), 0
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
            best = top_k(batch[1], scoring.texts, backend.logit_scale, parts.tagger.top_k)
            # An image's own columns, as it is stored (URI and hash as stored, not computed
            # again): the first six the read returns, then its labels.
            rows = [(*found[:6], *rendered.render(*top))
                    for found, top in zip(batch[0], zip(*best, strict=True), strict=True)]
        with clock.stage("write"):
            writes.write_scored(parts.engine, lines, shared, rows)
        images += len(rows)
    writes.finish_range(parts.engine, span.run_id, span.lo, task_id)
    return {"images": images, **clock.report()}


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
