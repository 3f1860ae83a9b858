"""Skip what is already tagged or in flight, and send the rest as chunk messages by task name."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice

from celery import Celery
from sqlalchemy.engine import Engine

from worker import store
from worker.labels import LabelSet
from worker.settings import TASK_NAME, Settings
from worker.store import Item

log = logging.getLogger(__name__)
LOOKUP_BATCH = 1000  # items checked against the database per round trip
RECORD_EVERY = 2.0  # seconds between updates of the run's counts while listing


@dataclass
class Summary:
    """What one enqueue did; printed as the one-line summary and stored on the run."""

    run_id: str
    listed: int = 0
    enqueued: int = 0
    skipped: int = 0
    chunks: int = 0
    dry_run: bool = False

    def counts(self) -> dict[str, int]:
        return {"listed": self.listed, "enqueued": self.enqueued, "skipped": self.skipped}

    def as_dict(self) -> dict:
        return asdict(self)


def batched(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def check_broker(app: Celery) -> None:
    """Fail fast, with kombu's own error, when the broker cannot be reached."""
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=5)


def send_chunk(app: Celery, settings: Settings, items: list[Item], labelset_id: str,
               run_id: str) -> None:
    # Only URIs and identifiers travel: credentials stay in each side's own configuration.
    # zlib shrinks a queued chunk about 5x in Redis (URLs repeat their prefixes); the short
    # kwargsrepr replaces a 1 KB repr header that Flower would show truncated anyway.
    app.send_task(TASK_NAME, queue=settings.queue, compression="zlib", kwargs={
        "items": [i.to_message() for i in items], "labelset_id": labelset_id, "run_id": run_id,
        "enqueued_at": time.time()},
        kwargsrepr=f"{{'items': <{len(items)} images from {items[0].uri}>, "
                   f"'labelset_id': {labelset_id!r}, 'run_id': {run_id!r}}}")


def enqueue(items: Iterable[Item | None], *, app: Celery, settings: Settings, labelset: LabelSet,
            source: str, chunk_size: int, force: bool = False, dry_run: bool = False,
            progress: Callable[[int], None] | None = None,
            show_due: Callable[[Item], None] | None = None) -> Summary:
    """Enqueue every due item of ``items`` (None = a listed non-image, counted as skipped).

    With ``dry_run`` nothing is sent or recorded; each due item goes to ``show_due`` instead.
    """
    engine = store.engine_for(settings.database_url)
    summary = Summary(run_id=uuid.uuid4().hex[:16], dry_run=dry_run)
    if not dry_run:
        check_broker(app)
        store.save_labelset(engine, labelset)
        store.create_run(engine, summary.run_id, source, settings.model, labelset.id)
    outgoing: list[Item] = []
    recorded, complete = time.monotonic(), False
    try:
        for batch in batched(items, LOOKUP_BATCH):
            outgoing.extend(_due(engine, batch, settings, labelset.id, summary, force, show_due))
            while len(outgoing) >= chunk_size:
                _flush(app, settings, outgoing[:chunk_size], labelset.id, summary)
                del outgoing[:chunk_size]
            if progress:
                progress(len(batch))
            if not dry_run and time.monotonic() - recorded > RECORD_EVERY:
                store.update_run(engine, summary.run_id, **summary.counts())
                recorded = time.monotonic()
        if outgoing:
            _flush(app, settings, outgoing, labelset.id, summary)
        complete = True
    finally:
        # Counts so far are kept when the listing or the broker fails half-way; only a complete
        # listing sets finished_at.
        if not dry_run:
            if outgoing and not complete:
                # Claimed but never sent: the next run must not take them for in flight.
                store.release_pending(engine, outgoing, settings.model, labelset.id)
            store.update_run(engine, summary.run_id, finished=complete, **summary.counts())
    return summary


def _due(engine: Engine, batch: list[Item | None], settings: Settings, labelset_id: str,
         summary: Summary, force: bool, show_due: Callable[[Item], None] | None) -> list[Item]:
    """The items of one listed batch to send: not tagged yet (or changed), not in flight."""
    images = [i for i in batch if i is not None]
    summary.listed += len(batch)
    with engine.begin() as conn:
        due = images if force else store.due_items(conn, images, settings.model, labelset_id)
        if summary.dry_run:
            claimed = list({i.uri: i for i in due}.values())
            for item in claimed if show_due else ():
                show_due(item)
        else:
            claimed = store.claim_pending(conn, due, settings.model, labelset_id,
                                          summary.run_id, settings.pending_ttl, force=force)
    summary.skipped += len(batch) - len(claimed)
    return claimed


def _flush(app: Celery, settings: Settings, chunk: list[Item], labelset_id: str,
           summary: Summary) -> None:
    # A chunk that fails to send is still in enqueue()'s outgoing list, released there.
    if not summary.dry_run:
        send_chunk(app, settings, chunk, labelset_id, summary.run_id)
    summary.enqueued += len(chunk)
    summary.chunks += 1


def failed_items(engine: Engine, model: str, labelset_id: str,
                 reason: str | None = None) -> Iterator[Item]:
    """The failed images of one model and label set, as Items to enqueue again."""
    for row in store.iter_results(engine, model=model, labelset_id=labelset_id, status="failed",
                                  reason=reason):
        yield Item(uri=row.uri, key=row.item_key, version=row.source_version)
