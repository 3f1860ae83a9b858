"""The main job in one command: tag a folder (or bucket prefix) and write its labels to a file."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producer.enqueue import Listing, Summary, enqueue, locate
from producer.export import export, format_of
from producer.local_worker import LocalWorker
from producer.progress import Progress
from producer.report import write_report
from producer.status import wait
from worker.core.labels import LabelSet
from worker.core.redact import redact
from worker.core.settings import Settings
from worker.db import migrate
from worker.db import runs as db
from worker.db.schema import engine_for
from worker.sources import scheme

log = logging.getLogger(__name__)


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
        chunk_size: int, timeout: float, force: bool = False, own_worker: bool = True,
        echo: Callable[[str], None] = print) -> Tagged:
    """List, enqueue, tag with a worker of our own, wait with progress, export; clean up always."""
    started = time.monotonic()
    migrate.ensure_current(settings.database_url)
    listing = locate(location, settings)
    log_path = settings.home / "logs" / f"worker-{time.strftime('%Y%m%d-%H%M%S')}.log"
    worker = LocalWorker(log_path, settings.queue) if own_worker else None
    with worker or contextlib.nullcontext():
        if worker:
            echo(f"starting a worker for {settings.model} (log: {log_path})")
        summary = _enqueue(settings, listing, labelset, chunk_size, force)
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


def _enqueue(settings: Settings, listing: Listing, labelset: LabelSet, chunk_size: int,
             force: bool) -> Summary:
    with Progress("listing", unit=" files") as bar:
        return enqueue(listing.entries, settings=settings, labelset=labelset,
                       source=listing.source, chunk_size=chunk_size,
                       file_roots=listing.file_roots, force=force,
                       progress=lambda n: bar.update(bar.done + n))


def _wait(settings: Settings, summary: Summary, worker: LocalWorker | None,
          timeout: float) -> None:
    """Progress until every image of the run is answered; Ctrl-C or a dead worker ends it."""
    def show(counts: Mapping[str, Any]) -> None:
        answered = counts["done"] + counts["failed"]
        note = ("worker starting" if worker and not worker.ready() and not answered
                else f"{counts['failed']} failed" if counts["failed"] else "")
        bar.update(answered, summary.enqueued, note)

    with Progress("tagging", total=summary.enqueued) as bar:
        try:
            wait(settings, summary.run_id, timeout, on_progress=show,
                 stop=worker.failure if worker else None)
        except BaseException:
            _cancel(settings, summary.run_id)
            raise


def _cancel(settings: Settings, run_id: str) -> None:
    """Nothing of ours will answer what is left: a later run may send it again."""
    engine = engine_for(settings.database_url)
    try:
        db.release_pending(engine, run_id)
        db.release_ranges(engine, run_id)  # a relabel run's (producer/relabel.py)
        db.update_run(engine, run_id, error="cancelled before it finished")
    except Exception as exc:  # the database may be why we stopped: its error is shown
        log.warning("could not release run %s's pending images (they stay pending for "
                    "TAGGER_PENDING_TTL): %s", run_id, redact(str(exc)))


def _selection(settings: Settings, location: str, labelset: LabelSet) -> dict[str, str]:
    """Every image under ``location`` with a result for this model and label set: those of this
    run, and those an earlier run already tagged (skipped as done this time)."""
    prefix = Path(location).as_uri() + "/" if scheme(location) == "" else location
    return {"uri_prefix": prefix, "model": settings.model, "labelset_id": labelset.id}


def _export(settings: Settings, selection: Mapping[str, str], summary: Summary,
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
