"""The main job in one command: tag a folder (or bucket prefix) and write its labels to a file."""

from __future__ import annotations

import contextlib
import functools
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from itertools import chain
from pathlib import Path
from typing import Any

from producer.enqueue import Listing, Summary, enqueue, locate, new_run_id
from producer.export import export, format_of, written
from producer.judged import judged_rows
from producer.local_worker import LocalWorker
from producer.outcomes import Tagged
from producer.progress import Progress
from producer.render import plural
from producer.report import write_report
from producer.watching import watch, withdrawn_if_stopped
from worker.core.contract import Item
from worker.core.errors import TaggerError
from worker.core.labels import LabelSet
from worker.core.redact import redact
from worker.core.settings import Settings
from worker.db import migrate
from worker.db import runs as db
from worker.db import status as db_status
from worker.db.models import served
from worker.db.schema import engine_for
from worker.sources import scheme

PEEK = 10_000  # entries read, at most, to find out whether a location holds any image


class NothingToTag(TaggerError):
    """The location lists no image at all: nothing was started or recorded."""

    exit_code = 3  # documented in the README: a script can tell it from an error (1)


def tag(settings: Settings, location: str, *, labelset: LabelSet, output: Path | None,
        chunk_size: int, timeout: float, force: bool = False, retry_failed: bool = False,
        own_worker: bool = True, echo: Callable[[str], None] = print,
        options: Mapping[str, Any] | None = None) -> Tagged:
    """List (``options``: the source's listing options), enqueue, tag with a worker of our own,
    wait with progress, export; clean up always.

    A run that fails or is interrupted is withdrawn: its unstarted chunks leave the queue.
    """
    started = time.monotonic()
    fmt = format_of(str(output)) if output else "jsonl"  # a wrong suffix before any work
    migrate.ensure_current(settings.database_url, settings.default_database)
    listing = locate(location, settings, **(options or {}))
    _require_images(listing)
    run_id = new_run_id()
    log_path = settings.home / "logs" / f"worker-{time.strftime('%Y%m%d-%H%M%S')}.log"
    worker = LocalWorker(log_path) if own_worker else None
    with worker or contextlib.nullcontext():  # stops the worker, whatever happens
        if worker:
            echo(f"starting a worker for {settings.model} (log: {log_path})")
        stop = functools.partial(worker.stop, warm=False) if worker else None  # at once
        with withdrawn_if_stopped(settings, run_id, echo, stop):
            summary = _enqueue(settings, listing, labelset, chunk_size, force, retry_failed,
                               run_id)
            echo(f"run {summary.run_id}: listed {summary.listed}, enqueued {summary.enqueued}, "
                 f"{summary.describe_skips()}")
            if outside := summary.describe_outside():
                echo(outside)
            if summary.enqueued:
                watch(settings, summary.run_id, summary.enqueued, worker, timeout)
        _follow(settings, summary.in_flight_runs, worker, timeout, echo)
    output = output or settings.home / "results" / f"{summary.run_id}.jsonl"
    selection = _selection(settings, listing.location, labelset)
    tagged = _export(settings, selection, summary, output, fmt)
    page = output.with_suffix(".html" if output.suffix != ".html" else ".report.html")
    tagged.report = write_report(settings, page, summary.run_id, selection)
    _update_index(settings, echo)
    tagged.seconds = time.monotonic() - started
    return tagged


def _update_index(settings: Settings, echo: Callable[[str], None]) -> None:
    """The search index, where there is one, takes the run's new embeddings (NumPy and faiss
    are loaded only then)."""
    from worker.search import keeper
    from worker.search.store import Store

    store = Store(engine_for(settings.database_url), settings)
    name = keeper.index_name(settings.database_url, store.identity())
    if keeper.Index.pointed(settings.index_dir, name) is not None:
        keeper.after_run(store, settings.index_dir, name, echo)


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


def _follow(settings: Settings, others: Mapping[str, int], worker: LocalWorker | None,
            timeout: float, echo: Callable[[str], None]) -> None:
    """Images another run is tagging (the same folder tagged twice at once): wait for that run
    to answer them, so that this command's results file has them too."""
    for other, images in others.items():
        found = db_status.find_runs(engine_for(settings.database_url), other)
        if not found or found[0]["state"] not in {"listing", "running"}:
            continue
        echo(f"{plural(images, 'image')} {'is' if images == 1 else 'are'} being tagged by "
             f"run {other} (started {found[0]['started_at']}): following it")
        watch(settings, other, images, worker, timeout, doing=f"run {other}")
        ended = db_status.find_runs(engine_for(settings.database_url), other)[0]
        if ended["state"] == "stopped":  # withdrawn: what it left is not in our results file
            echo(f"run {other} stopped early ({ended['error']}): the same command again tags "
                 "what it left")


def _selection(settings: Settings, location: str, labelset: LabelSet) -> dict[str, Any]:
    """Every image under ``location`` with a result of these weights and label set: those of
    this run, and those an earlier run already tagged (skipped as done this time)."""
    prefix = Path(location).as_uri() + "/" if scheme(location) == "" else location
    model = served(settings)
    return {"uri_prefix": prefix, "model_id": model.id if model else -1,  # -1: no result
            "labelset_id": labelset.id}


def _export(settings: Settings, selection: Mapping[str, Any], summary: Summary,
            output: Path, fmt: str) -> Tagged:
    tagged = Tagged(summary=summary, output=output)
    engine = engine_for(settings.database_url)
    rows = judged_rows(engine, db.iter_results(engine, **selection))

    def counted() -> Iterator[Mapping[str, Any]]:
        for row in rows:
            tagged.by_status[row["status"]] += 1
            if row["status"] == "failed":
                tagged.failed_by_reason[row["reason"]] += 1
            elif row["top_label"]:
                tagged.top_labels[row["top_label"]] += 1
            yield row

    output.parent.mkdir(parents=True, exist_ok=True)
    with written(output) as out:
        tagged.exported = export(counted(), out, fmt)
    return tagged
