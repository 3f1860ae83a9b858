"""Skip what is already tagged, in flight or unusable; send the rest as chunk messages."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from producer import sending
from worker.core.contract import Chunk, Item
from worker.core.errors import ConfigError, Skip
from worker.core.labels import LabelSet
from worker.core.redact import redact
from worker.core.settings import Settings
from worker.db import labelsets
from worker.db import runs as db
from worker.db.models import served
from worker.db.schema import engine_for
from worker.sources import Linked, Listed, Skipped, check_options, scheme, source_for, uri_problem
from worker.sources.local import path_of, shown

log = logging.getLogger(__name__)
LOOKUP_BATCH = 1000  # items checked against the database per round trip
RECORD_EVERY = 2.0  # seconds between updates of the run's counts while listing
SHOWN_OUTSIDE = 3  # files named in the warning about files outside the roots


@dataclass
class Listing:
    """One location to enqueue: its entries (already started), the folders its run may read
    files from, and what the run records as its source."""

    location: str
    entries: Iterator[Listed]
    file_roots: list[str]
    source: str


def locate(location: str, settings: Settings, **options: Any) -> Listing:
    """The listing of ``location`` by the source its scheme names, started at once, so that a
    missing folder or bucket fails before anything is enqueued or started."""
    source = source_for(location, settings)
    check_options(location, options)
    location, roots = source.locate(location)
    entries = source.listing(location, **options)
    first = list(islice(entries, 1))
    return Listing(location, chain(first, entries), roots, source.describe(location, **options))


@dataclass
class Summary:
    """What one enqueue did; printed as the summary and stored on the run."""

    run_id: str
    listed: int = 0
    enqueued: int = 0
    chunks: int = 0
    skipped_by_reason: Counter[str] = field(default_factory=Counter)
    in_flight_runs: Counter[str] = field(default_factory=Counter)  # other runs tagging them
    outside_roots: list[str] = field(default_factory=list)  # files workers will refuse
    outside_count: int = 0
    dry_run: bool = False

    @property
    def skipped(self) -> int:
        return sum(self.skipped_by_reason.values())

    def counts(self) -> dict[str, Any]:
        return {"listed": self.listed, "enqueued": self.enqueued, "skipped": self.skipped,
                "skipped_by_reason": dict(self.skipped_by_reason)}

    def describe_outside(self) -> str | None:
        """The line that says which files the workers will refuse, and what to change."""
        if not self.outside_count:
            return None
        some = ", ".join(self.outside_roots) + (", ..." if self.outside_count > len(
            self.outside_roots) else "")
        files = "1 file is" if self.outside_count == 1 else f"{self.outside_count} files are"
        return (f"warning: {files} outside the folders workers may read files from ({some}): "
                "they will fail as outside-roots; add their folders to TAGGER_FILE_ROOTS "
                f"({os.pathsep}-separated) for the producer and the workers")

    def describe_skips(self) -> str:
        """``skipped 7 (5 done, 2 not-image)``."""
        if not self.skipped:
            return "skipped 0"
        parts = ", ".join(f"{n} {reason}" for reason, n in self.skipped_by_reason.most_common())
        return f"skipped {self.skipped} ({parts})"


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def enqueue(listing: Iterable[Listed], *, settings: Settings, labelset: LabelSet, source: str,
            chunk_size: int, file_roots: Sequence[str] = (), force: bool = False,
            retry_failed: bool = False, dry_run: bool = False,
            progress: Callable[[int], None] | None = None,
            show_due: Callable[[Item], None] | None = None, run_id: str | None = None
            ) -> Summary:
    """Enqueue every due item of ``listing`` as one run; skips are counted by reason.

    With ``dry_run`` nothing is sent or recorded; each due item goes to ``show_due`` instead.
    ``retry_failed``: images that failed before at their current version are due too.
    """
    engine = engine_for(settings.database_url)
    summary = Summary(run_id=run_id or new_run_id(), dry_run=dry_run)
    model = served(settings, record=not dry_run)
    if not dry_run:
        sending.check_broker(settings)
        labelsets.save_labelset(engine, labelset)
        db.create_run(engine, summary.run_id, source, settings.model, labelset.id, file_roots)
    outgoing: list[Item] = []
    recorded, error = time.monotonic(), None
    try:
        for batch in batched(listing, LOOKUP_BATCH):
            _note_outside(batch, settings, file_roots, summary)
            outgoing.extend(_due(engine, batch, settings, (model and model.id, labelset.id),
                                 summary, force=force, retry_failed=retry_failed,
                                 show_due=show_due))
            while len(outgoing) >= chunk_size:
                _flush(settings, outgoing[:chunk_size], labelset.id, summary)
                del outgoing[:chunk_size]
            if progress:
                progress(len(batch))
            if not dry_run and time.monotonic() - recorded > RECORD_EVERY:
                db.update_run(engine, summary.run_id, **summary.counts())
                recorded = time.monotonic()
        if outgoing:
            _flush(settings, outgoing, labelset.id, summary)
            outgoing = []
    except BaseException as exc:
        # Shown by `status` and `runs`: a listing's error may quote a signed URL.
        error = ("cancelled" if isinstance(exc, KeyboardInterrupt)
                 else redact(str(exc) or repr(exc)))
        raise
    finally:
        if not dry_run:
            _close_run(engine, summary, outgoing, error)
    return summary


def _close_run(engine: Engine, summary: Summary, unsent: list[Item], error: str | None) -> None:
    """Record the counts so far and how the listing ended; release what was never sent.

    The database may be what failed: then this fails too, and the listing's own error is the
    one the user sees; what could not be recorded is said here.
    """
    try:
        if unsent:  # claimed but never sent: the next run must not take them for in flight
            db.release_pending(engine, summary.run_id, unsent)
        db.update_run(engine, summary.run_id, finished=True, error=error, **summary.counts())
    except Exception as exc:
        log.warning("could not record the end of run %s (%d unsent images stay pending for "
                    "TAGGER_PENDING_TTL): %s", summary.run_id, len(unsent), redact(str(exc)))


def _due(engine: Engine, batch: list[Listed], settings: Settings,
         identity: tuple[int | None, str], summary: Summary, *, force: bool, retry_failed: bool,
         show_due: Callable[[Item], None] | None) -> list[Item]:
    """The items of one listed batch to send: usable, not tagged yet by these weights and label
    set (``identity``) or changed since, not in flight."""
    model_id, labelset_id = identity
    summary.listed += len(batch)
    images: list[Item] = []
    for entry in batch:
        problem = entry if isinstance(entry, Skipped) else uri_problem(entry.uri)
        if problem:
            summary.skipped_by_reason[problem.reason.value] += 1
        else:
            images.append(entry)  # type: ignore[arg-type]
    targets = [i.target for i in images if isinstance(i, Linked)]
    if targets and not summary.dry_run:  # readable before any chunk naming them is sent
        db.add_file_roots(engine, summary.run_id, targets)
    with engine.begin() as conn:
        found = (db.Due(list(images)) if force else
                 db.due_items(conn, images, model_id, labelset_id, retry_failed,
                              use_kept=settings.keep_embeddings))
        due = found.items
        summary.skipped_by_reason[Skip.FAILED.value] += found.failed_before
        summary.skipped_by_reason[Skip.DONE.value] += len(images) - len(due) - found.failed_before
        if summary.dry_run:
            claimed = list({i.uri: i for i in due}.values())
            for item in claimed if show_due else ():
                show_due(item)
        else:
            claimed = db.claim_pending(conn, due, settings.model, labelset_id, summary.run_id,
                                       settings.pending_ttl, force=force)
            if len(claimed) < len(due):
                summary.in_flight_runs.update(db.pending_runs(
                    conn, due, settings.model, labelset_id, summary.run_id))
    summary.skipped_by_reason[Skip.IN_FLIGHT.value] += len(due) - len(claimed)
    summary.skipped_by_reason += Counter()  # drop zero counts
    return claimed


def _note_outside(batch: Sequence[Listed], settings: Settings, file_roots: Sequence[str],
                  summary: Summary) -> None:
    """Count the files (catalogue rows naming paths) that no worker will read: outside
    TAGGER_FILE_ROOTS and the run's own folders; links a folder listing met are readable."""
    roots = [*settings.file_roots, *(Path(root) for root in file_roots)]
    for item in batch:
        if not isinstance(item, Item) or isinstance(item, Linked) or (
                scheme(item.uri) not in {"", "file"}):
            continue
        path = path_of(item.uri)  # a folder's own files are under it as listed: no realpath
        if not any(path.is_relative_to(root) for root in roots) and not any(
                Path(os.path.realpath(path)).is_relative_to(root) for root in roots):
            summary.outside_count += 1
            if len(summary.outside_roots) < SHOWN_OUTSIDE:
                summary.outside_roots.append(shown(path))


def _flush(settings: Settings, items: list[Item], labelset_id: str, summary: Summary) -> None:
    # A chunk that fails to send is still in enqueue()'s outgoing list, released there.
    if not summary.dry_run:
        sending.send(settings, Chunk(items=tuple(items), model=settings.model,
                                    labelset_id=labelset_id, run_id=summary.run_id))
    summary.enqueued += len(items)
    summary.chunks += 1


def retry_failed(settings: Settings, reason: str | None, chunk_size: int
                 ) -> list[tuple[str, Summary]]:
    """Enqueue this model's failed images again (those of one reason, if given): one run per
    label set they failed under, each reading the folders their first runs could read."""
    engine = engine_for(settings.database_url)
    model = served(settings)
    done: list[tuple[str, Summary]] = []
    for labelset_id in db.failed_labelsets(engine, model.id, reason) if model else ():
        labelset = labelsets.load_labelset(engine, labelset_id)
        if labelset is None:
            raise ConfigError(f"label set {labelset_id} is not in the results database")
        summary = enqueue(
            failed_items(engine, model.id, labelset_id, reason), settings=settings,
            labelset=labelset, force=True, source=f"retry-failed reason={reason or '*'}",
            chunk_size=chunk_size,
            file_roots=db.failed_file_roots(engine, model.id, labelset_id, reason))
        done.append((labelset_id, summary))
    return done


def failed_items(engine: Engine, model_id: int, labelset_id: str,
                 reason: str | None = None) -> Iterator[Item]:
    """The failed images of these weights and label set, as Items to enqueue again (those whose
    stored URI can fetch them: not signed)."""
    for row in db.iter_results(engine, model_id=model_id, labelset_id=labelset_id,
                               status="failed", reason=reason, signed=False):
        yield Item(uri=row["uri"], key=row["item_key"], version=row["source_version"])
