"""The main job in one command: tag a folder (or bucket prefix) and write its labels to a file."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producer.enqueue import Summary, enqueue
from producer.local_worker import LocalWorker
from producer.progress import Progress
from producer.status import wait
from worker.core.errors import SourceError
from worker.core.labels import LabelSet
from worker.core.settings import Settings
from worker.db import migrate
from worker.db import runs as db
from worker.db.schema import engine_for
from worker.sinks.files import export, format_of
from worker.sources import Listed, scheme, source_for


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


def location_of(path_or_uri: str) -> tuple[str, list[str]]:
    """The listing location, and the folders the worker may read files from for it."""
    if scheme(path_or_uri) in {"", "file"}:
        folder = Path(path_or_uri.removeprefix("file://")).expanduser().absolute()
        if not folder.is_dir():
            raise SourceError(f"not a folder: {folder}")
        return str(folder), [str(folder.resolve())]
    return path_or_uri, []


def tag(settings: Settings, path_or_uri: str, *, labelset: LabelSet, output: Path | None,
        chunk_size: int, timeout: float, force: bool = False, own_worker: bool = True,
        echo: Callable[[str], None] = print) -> Tagged:
    """List, enqueue, tag with a worker of our own, wait with progress, export; clean up always."""
    started = time.monotonic()
    migrate.upgrade(settings.database_url)  # creates or upgrades the database as needed
    location, roots = location_of(path_or_uri)
    listing = _primed(source_for(location, settings).listing(location))
    log_path = settings.home / "logs" / f"worker-{time.strftime('%Y%m%d-%H%M%S')}.log"
    worker = LocalWorker(log_path, settings.queue) if own_worker else None
    with worker or contextlib.nullcontext():
        if worker:
            echo(f"starting a worker for {settings.model} (log: {log_path})")
        summary = _enqueue(settings, location, listing, labelset, roots, chunk_size, force)
        echo(f"run {summary.run_id}: listed {summary.listed}, enqueued {summary.enqueued}, "
             f"{summary.describe_skips()}")
        if summary.enqueued:
            _wait(settings, summary, worker, timeout)
    output = output or settings.home / "results" / f"{summary.run_id}.jsonl"
    tagged = _export(settings, location, labelset, summary, output)
    tagged.seconds = time.monotonic() - started
    return tagged


def _primed(listing: Iterator[Listed]) -> Iterator[Listed]:
    """Start the listing now, so that a missing folder or bucket fails before anything starts."""
    first = list(itertools.islice(listing, 1))
    return itertools.chain(first, listing)


def _enqueue(settings: Settings, location: str, listing: Iterator[Listed], labelset: LabelSet,
             roots: list[str], chunk_size: int, force: bool) -> Summary:
    with Progress("listing", unit=" files") as bar:
        return enqueue(listing, settings=settings, labelset=labelset, source=location,
                       chunk_size=chunk_size, file_roots=roots, force=force,
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
            # Nothing of ours will answer what is left: a later run may send it again.
            engine = engine_for(settings.database_url)
            with contextlib.suppress(Exception):
                db.release_pending(engine, summary.run_id)
                db.update_run(engine, summary.run_id, error="cancelled before it finished")
            raise


def _export(settings: Settings, location: str, labelset: LabelSet, summary: Summary,
            output: Path) -> Tagged:
    """Every image under ``location`` with a result for this model and label set: those of this
    run, and those an earlier run already tagged (skipped as done this time)."""
    tagged = Tagged(summary=summary, output=output)
    prefix = Path(location).as_uri() + "/" if scheme(location) == "" else location
    rows = db.iter_results(engine_for(settings.database_url), uri_prefix=prefix,
                           model=settings.model, labelset_id=labelset.id)

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
