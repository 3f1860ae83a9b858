"""`producer relabel`: a run that scores kept embeddings with a label set, in range messages.

The images of a model (or of one run) are split into ranges of kept embeddings (by the key of
their content hash, worker/core/embedding.py), one message each, so that a fleet shares them;
each range counts as pending, with about how many images it holds, until a worker answers it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from producer import render, sending
from producer.local_worker import LocalWorker
from producer.outcomes import Relabelling
from producer.status import find_run
from producer.watching import watch, withdrawn_if_stopped
from worker.core.contract import Span
from worker.core.embedding import spans
from worker.core.errors import ConfigError
from worker.core.labels import LabelSet
from worker.core.settings import Settings
from worker.db import embeddings, labelsets
from worker.db import runs as db
from worker.db import status as db_status
from worker.db.models import served
from worker.db.schema import engine_for

RANGE_IMAGES = 20_000  # images per message: a few seconds of a worker, thousands of them a night


def relabel(settings: Settings, labelset: LabelSet, *, scope_run: str | None = None,
            range_images: int = RANGE_IMAGES) -> Relabelling:
    """Record the run, mark its ranges pending and send one message per range."""
    return _send(settings, labelset, scope_run, _images(settings, scope_run), range_images)


def _images(settings: Settings, scope_run: str | None) -> int:
    """About how many images there are to relabel; a ConfigError if there are none."""
    if scope_run:
        find_run(settings, scope_run)  # an unknown run is a mistake, not 0 images
    engine = engine_for(settings.database_url)
    embeddings.refresh_statistics(engine)
    model = served(settings)
    images = embeddings.estimate_images(engine, embeddings.Scope(model, scope_run)) if model else 0
    if not images:
        raise ConfigError(f"no image has a kept embedding under model {settings.model}"
                          + (f" in run {scope_run}" if scope_run else "")
                          + ": tag them first (with TAGGER_KEEP_EMBEDDINGS on, the default)")
    return images


def _send(settings: Settings, labelset: LabelSet, scope_run: str | None, images: int,
          range_images: int) -> Relabelling:
    engine = engine_for(settings.database_url)
    sending.check_broker(settings)
    labelsets.save_labelset(engine, labelset)
    run_id = uuid.uuid4().hex[:16]
    db.create_run(engine, run_id, "relabel kept embeddings"
                  + (f" of run {scope_run}" if scope_run else ""), settings.model, labelset.id)
    count = max(1, -(-images // range_images))
    parts = [Span(settings.model, labelset.id, run_id, lo, hi, scope_run)
             for lo, hi in spans(count)]
    db.add_pending_ranges(engine, parts, [images // count + (i < images % count)
                                          for i in range(count)])
    sent, error = 0, None
    try:
        for part in parts:
            sending.send(settings, part)
            sent += 1
    except BaseException as exc:
        error = "cancelled" if isinstance(exc, KeyboardInterrupt) else str(exc) or repr(exc)
        db.release_ranges(engine, run_id, parts[sent:])
        raise
    finally:
        db.update_run(engine, run_id, finished=True, error=error, listed=images,
                      enqueued=images if sent == count else 0)
    # Only once sent: earlier runs' lost ranges stay theirs if this run could not be sent.
    return Relabelling(run_id, images, count, db.take_over_ranges(
        engine, run_id, settings.model, labelset.id, scope_run, settings.pending_ttl), scope_run)


def relabel_here(settings: Settings, labelset: LabelSet, *, scope_run: str | None,
                 timeout: float, echo: Callable[[str], None]) -> dict[str, Any]:
    """On the embedded default: with a worker of our own, until every range is answered (as
    `producer tag` waits: progress, a dead worker or Ctrl-C ends it, what is left released)."""
    images = _images(settings, scope_run)
    log_path = settings.home / "logs" / f"worker-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with LocalWorker(log_path) as worker:
        echo(f"starting a worker for {settings.model} (log: {log_path})")
        sent = _send(settings, labelset, scope_run, images, RANGE_IMAGES)
        echo(f"run {sent.run_id}: {render.kept(sent)}")
        if sent.taken_over:
            echo(render.taken_over(sent.taken_over))
        with withdrawn_if_stopped(settings, sent.run_id):
            watch(settings, sent.run_id, sent.images, worker, timeout, doing="relabelling")
    return {"run": sent.run_id, **db_status.result_counts(engine_for(settings.database_url),
                                                     sent.run_id)}
