"""One chunk message, start to end: check it, count the delivery, tag, write once."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from worker import metrics
from worker.core.contract import Chunk, Result
from worker.core.errors import ItemError, Reason
from worker.core.redact import redact
from worker.db import results as db
from worker.pipeline import Tagger, Work

log = logging.getLogger(__name__)


@dataclass
class ChunkReport:
    """What a chunk came to, returned by the task (small: it is logged, not stored)."""

    done: int = 0
    failed: int = 0
    parked: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"done": self.done, "failed": self.failed, "parked": self.parked,
                "timings": {k: round(v, 4) for k, v in self.timings.items()}}


def results_of(works: Sequence[Work], chunk: Chunk, tagger: Tagger, attempts: int
               ) -> list[Result]:
    runtime = tagger.backend.description
    return [Result(item=w.item, model=chunk.model, labelset_id=chunk.labelset_id,
                   run_id=chunk.run_id, labels=w.labels or [], content_sha256=w.sha256,
                   reason=w.error.reason if w.error else None,
                   error=redact(str(w.error)) if w.error else None, attempts=attempts,
                   runtime=None if w.error else runtime) for w in works]


def park(tagger: Tagger, chunk: Chunk, reason: Reason, message: str, *, task_id: str | None,
         attempts: int = 1) -> ChunkReport:
    """Record every item of a chunk as failed with one reason, instead of tagging it."""
    error = ItemError(reason, message)
    works = [Work(item, error=error) for item in chunk.items]
    write(tagger, results_of(works, chunk, tagger, attempts), task_id)
    return ChunkReport(failed=len(works), parked=reason.value)


def write(tagger: Tagger, outcomes: Sequence[Result], task_id: str | None) -> float:
    started = time.perf_counter()
    for sink in tagger.sinks:
        sink.write(outcomes, task_id)
    metrics.observe_results(outcomes)
    return time.perf_counter() - started


def run_chunk(tagger: Tagger, chunk: Chunk, *, task_id: str, retries: int, final: bool
              ) -> ChunkReport:
    """Everything one chunk message asks for: check it, count the delivery, tag, write once."""
    settings = tagger.settings
    if chunk.model != settings.model:
        log.error("chunk is for model %s, this worker serves %s: parked", chunk.model,
                  settings.model)
        return park(tagger, chunk, Reason.MODEL_MISMATCH, task_id=task_id, message=(
            f"enqueued for model {chunk.model} but taken by a worker serving {settings.model}; "
            "start a worker with that TAGGER_MODEL, then `producer retry-failed --reason "
            "model-mismatch`"))
    deliveries = db.start_delivery(tagger.engine, task_id, chunk.run_id, len(chunk.items))
    # Retries start the message again on purpose; only starts beyond those are deaths.
    if deliveries - retries > settings.max_deliveries:
        log.error("parking chunk after %d deliveries (%d items)", deliveries, len(chunk.items))
        return park(tagger, chunk, Reason.PARKED, task_id=task_id, attempts=deliveries,
                    message=f"chunk was delivered {deliveries} times without finishing (it "
                            "kills its worker?); retry alone with `producer retry-failed "
                            "--reason parked --chunk-size 1`")
    known = tagger.labelset(chunk.labelset_id)
    if known is None:
        return park(tagger, chunk, Reason.UNKNOWN_LABELSET, task_id=task_id,
                    message=f"label set {chunk.labelset_id} is not in the results database")
    works, timings = tagger.tag(chunk, *known, final=final)
    outcomes = results_of(works, chunk, tagger, deliveries)
    timings["write"] = write(tagger, outcomes, task_id)
    metrics.observe_timings(timings)
    failed = sum(o.reason is not None for o in outcomes)
    return ChunkReport(done=len(outcomes) - failed, failed=failed, timings=timings)
