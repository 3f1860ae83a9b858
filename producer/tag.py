"""The main job in one command: tag a folder (or bucket prefix) and write its labels to a file."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from producer import sending
from producer.enqueue import Listing, Summary, enqueue, locate, new_run_id
from producer.export import export, format_of
from producer.local_worker import LocalWorker
from producer.model import served
from producer.progress import Progress
from producer.report import write_report
from producer.status import wait
from worker.core.contract import Item
from worker.core.errors import TaggerError
from worker.core.labels import LabelSet
from worker.core.redact import redact
from worker.core.settings import Settings
from worker.db import migrate
from worker.db import runs as db
from worker.db import status as db_status
from worker.db.schema import engine_for
from worker.sources import scheme

log = logging.getLogger(__name__)
PEEK = 10_000  # entries read, at most, to find out whether a location holds any image


class NothingToTag(TaggerError):
    """The location lists no image at all: nothing was started or recorded."""

    exit_code = 3  # documented in the README: a script can tell it from an error (1)


@dataclass
class Tagged:
    """What ``producer tag`` did, for its closing summary."""

    summary: Summary
    output: Path
    exported: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    failed_by_reason: Counter[str] = field(default_factory=Counter)
    top_labels: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    report: Path | None = None


def tag(settings: Settings, location: str, *, labelset: LabelSet, output: Path | None,
        chunk_size: int, timeout: float, force: bool = False, retry_failed: bool = False,
        own_worker: bool = True, echo: Callable[[str], None] = print) -> Tagged:
    """List, enqueue, tag with a worker of our own, wait with progress, export; clean up always.

    A run that fails or is interrupted is withdrawn: its unstarted chunks leave the queue.
    """
    started = time.monotonic()
    migrate.ensure_current(settings.database_url)
    listing = locate(location, settings)
    _require_images(listing)
    run_id = new_run_id()
    log_path = settings.home / "logs" / f"worker-{time.strftime('%Y%m%d-%H%M%S')}.log"
    worker = LocalWorker(log_path) if own_worker else None
    with worker or contextlib.nullcontext():  # stops the worker, whatever happens
        if worker:
            echo(f"starting a worker for {settings.model} (log: {log_path})")
        with withdrawn_if_stopped(settings, run_id):
            summary = _enqueue(settings, listing, labelset, chunk_size, force, retry_failed,
                               run_id)
            echo(f"run {summary.run_id}: listed {summary.listed}, enqueued {summary.enqueued}, "
                 f"{summary.describe_skips()}")
            if summary.enqueued:
                _wait(settings, summary, worker, timeout)
    output = output or settings.home / "results" / f"{summary.run_id}.jsonl"
    selection = _selection(settings, listing.location, labelset)
    tagged = _export(settings, selection, summary, output)
    page = output.with_suffix(".html" if output.suffix != ".html" else ".report.html")
    tagged.report = write_report(settings, page, summary.run_id, selection)
    tagged.seconds = time.monotonic() - started
    return tagged


def _require_images(listing: Listing) -> None:
    """NothingToTag unless an image comes within the first entries; those stay in the listing."""
    seen: list[Any] = []
    for entry in listing.entries:
        seen.append(entry)
        if isinstance(entry, Item) or len(seen) >= PEEK:
            listing.entries = chain(seen, listing.entries)
            return
    skipped = Counter(str(entry.reason) for entry in seen)
    found = (f"listed {len(seen)}, none an image: "
             + ", ".join(f"{n} {reason}" for reason, n in skipped.most_common())
             if seen else "no files")
    raise NothingToTag(f"nothing to tag at {redact(listing.location)} ({found})")


def _enqueue(settings: Settings, listing: Listing, labelset: LabelSet, chunk_size: int,
             force: bool, retry_failed: bool, run_id: str) -> Summary:
    with Progress("listing", unit=" files") as bar:
        return enqueue(listing.entries, settings=settings, labelset=labelset,
                       source=listing.source, chunk_size=chunk_size,
                       file_roots=listing.file_roots, force=force, retry_failed=retry_failed,
                       progress=lambda n: bar.update(bar.done + n), run_id=run_id)


def _wait(settings: Settings, summary: Summary, worker: LocalWorker | None,
          timeout: float, doing: str = "tagging") -> None:
    """Progress until every image of the run is answered; Ctrl-C or a dead worker ends it."""
    def show(counts: Mapping[str, Any]) -> None:
        answered = counts["done"] + counts["failed"]
        note = ("worker starting" if worker and not worker.ready() and not answered
                else f"{counts['failed']} failed" if counts["failed"] else "")
        bar.update(answered, summary.enqueued, note)

    with Progress(doing, total=summary.enqueued) as bar:
        wait(settings, summary.run_id, timeout, on_progress=show,
             stop=worker.failure if worker else None)


@contextlib.contextmanager
def withdrawn_if_stopped(settings: Settings, run_id: str) -> Iterator[None]:
    """A run that fails or is interrupted within the block is withdrawn (its unstarted chunks
    or ranges leave the queue; workers drop those they meet)."""
    try:
        yield
    except BaseException as exc:
        _withdraw(settings, run_id, exc)
        raise


def _withdraw(settings: Settings, run_id: str, cause: BaseException) -> None:
    """Nothing of ours will answer what is left: take it off the queue, and record what really
    happened (a run whose every image was answered stays complete)."""
    engine = engine_for(settings.database_url)
    try:
        counts = db_status.result_counts(engine, run_id)
        if not counts["pending"]:  # every image sent was answered: no chunk of it is left
            return
        why = ("interrupted" if isinstance(cause, KeyboardInterrupt | SystemExit)
               else redact(str(cause) or type(cause).__name__)[:300])
        db.cancel_run(engine, run_id, f"{counts['done'] + counts['failed']} images answered, "
                                      f"{counts['pending']} withdrawn: {why}")
        sending.withdraw(settings, run_id)
    except Exception as exc:  # the database or broker may be why we stopped: its error is shown
        log.warning("could not withdraw run %s (its unanswered images stay pending for "
                    "TAGGER_PENDING_TTL): %s", run_id, redact(str(exc)))


def _selection(settings: Settings, location: str, labelset: LabelSet) -> dict[str, Any]:
    """Every image under ``location`` with a result of these weights and label set: those of
    this run, and those an earlier run already tagged (skipped as done this time)."""
    prefix = Path(location).as_uri() + "/" if scheme(location) == "" else location
    model = served(settings)
    return {"uri_prefix": prefix, "model_id": model.id if model else -1,  # -1: no result
            "labelset_id": labelset.id}


def _export(settings: Settings, selection: Mapping[str, Any], summary: Summary,
            output: Path) -> Tagged:
    tagged = Tagged(summary=summary, output=output)
    rows = db.iter_results(engine_for(settings.database_url), **selection)

    def counted() -> Iterator[Mapping[str, Any]]:
        for row in rows:
            tagged.by_status[row["status"]] += 1
            if row["status"] == "failed":
                tagged.failed_by_reason[row["reason"]] += 1
            elif row["top_label"]:
                tagged.top_labels[row["top_label"]] += 1
            yield row

    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("wb") as out:
        tagged.exported = export(counted(), out, format_of(str(output)))
    return tagged
