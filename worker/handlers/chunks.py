"""One chunk message, start to end: check it, count the delivery, tag, write once."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.core import metrics
from worker.core.contract import KEPT_RUNTIME, Chunk, Item, Result
from worker.core.errors import ItemError, Reason, TransientError
from worker.core.redact import redact
from worker.db import models
from worker.db import writes as db
from worker.loop.assemble import Parts
from worker.loop.work import Work
from worker.sinks import write_all

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


class RetryItems(TransientError):
    """Some images met trouble that may pass: the others are written, these go again."""

    def __init__(self, items: Sequence[Item], cause: TransientError) -> None:
        super().__init__(f"{len(items)} of the chunk's images to try again: {cause}")
        self.items = tuple(items)


def results_of(works: Sequence[Work], chunk: Chunk, runtime: str, attempts: int,
               weights: str | None = None) -> list[Result]:
    """The rows of the answered works, under the weights that computed them; a work with
    neither labels nor an error (a bug) is failed, never stored done without labels."""
    out = []
    for w in works:
        error = w.error
        if error is None and not w.labels:
            error = ItemError(Reason.INTERNAL_ERROR, "no labels were computed for the image")
        out.append(Result(item=w.item, model=chunk.model, labelset_id=chunk.labelset_id,
                          run_id=chunk.run_id, labels=[] if error else w.labels or [],
                          content_sha256=w.sha256, reason=error.reason if error else None,
                          error=redact(str(error)) if error else None, attempts=attempts,
                          runtime=None if error else KEPT_RUNTIME if w.kept else runtime,
                          weights=weights, embedding=None if error else w.embedding))
    return out


def park(parts: Parts, chunk: Chunk, reason: Reason, message: str, *, task_id: str | None,
         attempts: int = 1) -> ChunkReport:
    """Record every item of a chunk as failed with one reason, instead of tagging it."""
    error = ItemError(reason, message)
    works = [Work(item, error=error) for item in chunk.items]
    write(parts, results_of(works, chunk, "", attempts, weights_of(parts, chunk.model)), task_id)
    return ChunkReport(failed=len(works), parked=reason.value)


def weights_of(parts: Parts, model: str) -> str | None:
    """The weights a chunk's failures are stored under: this worker's for its own model; for
    another model's (sent to the wrong queue), the weights its workers registered last, where
    its producer's `retry-failed` looks (none known: its name)."""
    if model == parts.model:
        return parts.served.weights
    other = models.latest(parts.engine, model)
    return other.weights if other else None


def write(parts: Parts, outcomes: Sequence[Result], task_id: str | None) -> float:
    started = time.perf_counter()
    write_all(parts.sinks, outcomes, task_id)
    metrics.observe_results(outcomes)
    return time.perf_counter() - started


def run_chunk(parts: Parts, chunk: Chunk, *, task_id: str, chunk_retries: int) -> ChunkReport:
    """Everything one chunk message asks for: check it, count the delivery, tag, write once.

    Deliveries and retries are counted from what workers recorded in the database, never from
    the message's headers: a sender can write any ``retries`` there.
    """
    if chunk.model != parts.model:
        log.error("chunk is for model %s, this worker serves %s: parked", chunk.model,
                  parts.model)
        return park(parts, chunk, Reason.MODEL_MISMATCH, task_id=task_id, message=(
            f"enqueued for model {chunk.model} but taken by a worker serving {parts.model}; "
            "start a worker with that TAGGER_MODEL, then `producer retry-failed --reason "
            "model-mismatch`"))
    delivery = db.start_delivery(parts.engine, task_id, chunk.run_id, len(chunk.items))
    if delivery.cancelled:  # its `producer tag` gave up: nobody waits for these images
        log.warning("run %s was withdrawn: its chunk is dropped, not tagged", chunk.run_id)
        db.drop_withdrawn(parts.engine, task_id, chunk.run_id or "", chunk.items)
        return ChunkReport(parked="withdrawn")
    if delivery.starts == 1:
        metrics.observe_queue_wait(time.time() - chunk.enqueued_at)
    if delivery.deaths >= parts.max_deliveries:
        log.error("parking chunk after %d deliveries (%d items)", delivery.starts,
                  len(chunk.items))
        return park(parts, chunk, Reason.PARKED, task_id=task_id, attempts=delivery.starts,
                    message=f"chunk was delivered {delivery.starts} times without finishing (it "
                            "kills its worker?); retry alone with `producer retry-failed "
                            "--reason parked --chunk-size 1`")
    scoring = parts.labels.get(chunk.labelset_id)
    if scoring is None:
        return park(parts, chunk, Reason.UNKNOWN_LABELSET, task_id=task_id,
                    message=f"label set {chunk.labelset_id} is not in the results database")
    tagger = parts.tagger
    works, timings = tagger.tag(chunk.items, scoring, parts.roots.for_run(chunk.run_id),
                                final=delivery.retries >= chunk_retries)
    again = [w for w in works if w.transient is not None]
    answered = [w for w in works if w.transient is None]
    outcomes = results_of(answered, chunk, tagger.backend.description, delivery.starts,
                          parts.served.weights)
    timings["write"] = write(parts, outcomes, task_id)
    metrics.observe_timings(timings)
    if again:  # after the write: the answered images are not fetched again
        raise RetryItems([w.item for w in again], again[0].transient)  # type: ignore[arg-type]
    _say_once(outcomes)
    failed = sum(o.reason is not None for o in outcomes)
    return ChunkReport(done=len(outcomes) - failed, failed=failed, timings=timings)


_said: set[Reason] = set()  # reasons that are this worker's configuration, logged once


def _say_once(outcomes: Sequence[Result]) -> None:
    """Images failed for the worker's configuration (no S3 credentials): one log line per
    process, with what to do; the rest say it in their results."""
    for outcome in outcomes:
        if outcome.reason == Reason.CREDENTIALS and outcome.reason not in _said:
            _said.add(outcome.reason)
            log.error("%s (each image it serves fails so, at once, until then)", outcome.error)


def grant_retry(parts: Parts, task_id: str, chunk_retries: int, header_retries: int
                ) -> int | None:
    """The number of the retry to send (1, 2, ...), or None once the retries the workers
    recorded for this message are spent."""
    try:
        return db.grant_retry(parts.engine, task_id, chunk_retries)
    except TransientError as lost:
        # The database is away: nothing can be counted nor recorded, and dropping the message
        # would lose it. Retry; the count resumes from the database once it is back.
        log.warning("cannot record the retry (%s): retrying anyway", lost)
        return max(1, header_retries + 1)


def retry_or_park(parts: Parts, chunk: Chunk, exc: BaseException, reason: Reason, *,
                  task_id: str, chunk_retries: int, header_retries: int) -> int | ChunkReport:
    """After a transient failure: the number of the retry to send, or, once the retries are
    spent, the images still unanswered recorded as failed with ``reason``."""
    if isinstance(exc, RetryItems):  # the others are written already
        chunk = dataclasses.replace(chunk, items=exc.items)
    granted = grant_retry(parts, task_id, chunk_retries, header_retries)
    if granted is not None:
        return granted
    log.error("giving up on the chunk after %d retries: %s", chunk_retries, exc)
    try:
        return park(parts, chunk, reason, task_id=task_id, attempts=chunk_retries + 1,
                    message=f"gave up after {chunk_retries} retries: {exc or 'time limit'}; "
                            f"send again with `producer retry-failed --reason {reason}`")
    except TransientError:  # away again: not lost, tried once more
        return max(1, header_retries + 1)
