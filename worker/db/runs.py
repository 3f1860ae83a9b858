"""The producer's database calls: due checks, pending claims, runs, status figures, exports."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from worker.core.contract import Item, Span, uri_hash
from worker.core.redact import stored_uri
from worker.db import embeddings, images
from worker.db.schema import (
    batches,
    insert,
    pending,
    pending_ranges,
    results,
    retried,
    runs,
)


@dataclass
class Due:
    """The items of a listed batch to send, and those left out because they failed before."""

    items: list[Item] = field(default_factory=list)
    failed_before: int = 0  # a failed result at this version: sent again only when asked


def due_items(conn: Connection, items: Sequence[Item], model_id: int | None, labelset_id: str,
              retry_failed: bool = False, use_kept: bool = False) -> Due:
    """The items without a result of these weights (``model_id``; None: none known yet) and
    label set at their current version (with ``retry_failed``: or with a failed one).

    ``use_kept``: a due item whose own latest fetch was of this version, and whose content
    then has a kept embedding of these weights, is sent with that content's hash
    (``Item.sha256``): the worker, once it has checked that claim, scores it from the
    embedding instead of fetching it.
    """
    known: dict[str, tuple[str | None, str, str | None]] = {}
    hashes = sorted({uri_hash(i.uri) for i in items})
    for part in batches(hashes) if model_id is not None else ():
        rows = conn.execute(sa.select(results.c.uri_hash, results.c.source_version,
                                      results.c.status, results.c.item_key).where(
            results.c.model_id == model_id, results.c.labelset_id == labelset_id,
            results.c.uri_hash.in_(part)))
        known.update((row.uri_hash, (row.source_version, row.status, row.item_key))
                     for row in rows)
    due = Due()
    for item in items:
        version, status, key = known.get(uri_hash(item.uri), (None, None, None))
        changed = (item.version or version) != version and not _another_row(item, key)
        if status is None or changed:
            due.items.append(item)
        elif status == "failed" and not retry_failed:
            due.failed_before += 1
        elif status == "failed":
            due.items.append(item)
    if use_kept and model_id is not None and due.items:
        due.items = _with_kept(conn, due.items, model_id)
    return due


def _another_row(item: Item, stored_key: str | None) -> bool:
    """The URL's result was tagged for another catalogue row: two rows sharing one URL with
    different versions would otherwise send it again every night, each in turn."""
    return item.key is not None and stored_key is not None and item.key != stored_key


def _with_kept(conn: Connection, items: list[Item], model_id: int) -> list[Item]:
    """Items whose content at their version has a kept embedding, sent with its hash."""
    fetched = images.contents(conn, (uri_hash(i.uri) for i in items))
    found = [fetched.get(uri_hash(i.uri), (None, None)) for i in items]
    claims = [content if content and version == i.version else None
              for i, (version, content) in zip(items, found, strict=True)]
    kept = embeddings.kept_hashes(conn, model_id, {sha for sha in claims if sha})
    return [replace(i, sha256=sha) if sha in kept else i
            for i, sha in zip(items, claims, strict=True)]


def claim_pending(conn: Connection, items: Sequence[Item], model: str, labelset_id: str,
                  run_id: str, ttl_seconds: int, force: bool = False) -> list[Item]:
    """Mark items pending for this run; return those not already pending in a live run.

    A mark older than ``ttl_seconds`` (a lost message, a crashed run) is taken over; ``force``
    takes over other runs' marks, fresh or not. The first of several items with one URI wins.
    """
    if not items:
        return []
    current = datetime.now(UTC)
    by_hash: dict[str, Item] = {}
    for item in items:
        by_hash.setdefault(uri_hash(item.uri), item)
    stmt = insert(conn, pending)
    stale = pending.c.enqueued_at < current - timedelta(seconds=ttl_seconds)
    # Even forced, a run never claims an image twice (the same URL on two catalogue rows).
    other_run = sa.or_(pending.c.run_id.is_(None), pending.c.run_id != stmt.excluded.run_id)
    stmt = stmt.on_conflict_do_update(
        index_elements=["uri_hash", "model", "labelset_id"],
        set_={"run_id": stmt.excluded.run_id, "enqueued_at": stmt.excluded.enqueued_at},
        where=other_run if force else stale,
    ).returning(pending.c.uri_hash)
    # One statement with many parameter sets (batched by SQLAlchemy's insertmanyvalues): a
    # values() list would compile, and cache, a new statement for every batch length.
    rows = [{"uri_hash": key, "uri": stored_uri(item.uri), "model": model,
             "labelset_id": labelset_id, "run_id": run_id, "enqueued_at": current}
            for key, item in by_hash.items()]
    claimed = set(conn.execute(stmt, rows).scalars())
    return [item for key, item in by_hash.items() if key in claimed]


def pending_runs(conn: Connection, items: Sequence[Item], model: str, labelset_id: str,
                 run_id: str) -> dict[str, int]:
    """How many of ``items`` each other run holds pending (they are in flight there)."""
    found: dict[str, int] = {}
    for part in batches(sorted({uri_hash(i.uri) for i in items})):
        for other, count in conn.execute(
                sa.select(pending.c.run_id, sa.func.count()).where(
                    pending.c.model == model, pending.c.labelset_id == labelset_id,
                    pending.c.uri_hash.in_(part), pending.c.run_id != run_id)
                .group_by(pending.c.run_id)):
            found[other] = found.get(other, 0) + int(count)
    return found


@retried
def release_pending(engine: Engine, run_id: str, items: Sequence[Item] | None = None) -> int:
    """Drop a run's pending marks (those of ``items`` only, if given): nothing will answer them."""
    with engine.begin() as conn:
        if items is None:
            return conn.execute(pending.delete().where(pending.c.run_id == run_id)).rowcount
        count = 0
        for part in batches(sorted({uri_hash(i.uri) for i in items})):
            count += conn.execute(pending.delete().where(pending.c.run_id == run_id,
                                                         pending.c.uri_hash.in_(part))).rowcount
        return count


@retried
def cancel_run(engine: Engine, run_id: str, error: str | None) -> None:
    """Withdraw a run: workers drop its chunks from now on, its pending marks go (a later run
    may send those images again). ``error``: what happened, None if nothing was left to do."""
    with engine.begin() as conn:
        conn.execute(runs.update().where(runs.c.id == run_id)
                     .values(cancelled_at=datetime.now(UTC), error=error))
        conn.execute(pending.delete().where(pending.c.run_id == run_id))
        conn.execute(pending_ranges.delete().where(pending_ranges.c.run_id == run_id))


@retried
def add_file_roots(engine: Engine, run_id: str, paths: Sequence[str]) -> None:
    """Let this run's chunks read these files too (the targets of links in a listed folder)."""
    with engine.begin() as conn:
        known = conn.scalar(sa.select(runs.c.file_roots).where(runs.c.id == run_id)) or []
        have = set(known)
        added = [p for p in dict.fromkeys(paths) if p not in have]
        if added:
            conn.execute(runs.update().where(runs.c.id == run_id)
                         .values(file_roots=[*known, *added]))


@retried
def create_run(engine: Engine, run_id: str, source: str, model: str, labelset_id: str,
               file_roots: Sequence[str] = ()) -> None:
    with engine.begin() as conn:
        conn.execute(runs.insert().values(id=run_id, source=source, model=model,
                                          labelset_id=labelset_id, skipped_by_reason={},
                                          file_roots=list(file_roots),
                                          started_at=datetime.now(UTC)))


@retried
def update_run(engine: Engine, run_id: str, *, finished: bool = False, error: str | None = None,
               **values: Any) -> None:
    """Store a run's counts so far; ``finished`` when its listing ended (``error`` if early)."""
    if finished:
        values["finished_at"] = datetime.now(UTC)
    if error is not None:
        values["error"] = error
    with engine.begin() as conn:
        conn.execute(runs.update().where(runs.c.id == run_id).values(**values))


@retried
def add_pending_ranges(engine: Engine, spans: Sequence[Span], images: Sequence[int]) -> None:
    """A relabel run's ranges, each with about how many images it will score, now pending."""
    current = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(pending_ranges.insert(), [
            {"run_id": span.run_id, "lo": span.lo, "hi": span.hi, "images": count,
             "scope_run": span.scope_run, "enqueued_at": current}
            for span, count in zip(spans, images, strict=True)])


@retried
def take_over_ranges(engine: Engine, run_id: str, model: str, labelset_id: str,
                     scope_run: str | None, ttl_seconds: int) -> dict[str, int]:
    """Ranges of earlier relabel runs (this model and label set) left unanswered for over
    ``ttl_seconds`` (their messages lost with a wiped broker, say) that this run scores too:
    they stop being pending, and their runs say which run took them over. Returns the images
    taken over, by run. ``scope_run``: this run scores only that run's images."""
    stale = datetime.now(UTC) - timedelta(seconds=ttl_seconds)
    covered = [] if scope_run is None else [pending_ranges.c.scope_run == scope_run]
    taken: dict[str, int] = {}
    with engine.begin() as conn:
        for old, lo, images in conn.execute(
                sa.select(pending_ranges.c.run_id, pending_ranges.c.lo, pending_ranges.c.images)
                .join(runs, runs.c.id == pending_ranges.c.run_id)
                .where(runs.c.model == model, runs.c.labelset_id == labelset_id,
                       runs.c.id != run_id, pending_ranges.c.enqueued_at < stale, *covered)
                ).all():
            conn.execute(pending_ranges.delete().where(pending_ranges.c.run_id == old,
                                                       pending_ranges.c.lo == lo))
            taken[old] = taken.get(old, 0) + int(images)
        for old, images in taken.items():
            conn.execute(runs.update().where(runs.c.id == old, runs.c.error.is_(None)).values(
                error=f"about {images} images unanswered for over {ttl_seconds} s "
                      f"(TAGGER_PENDING_TTL; their messages were lost?) were taken over by run "
                      f"{run_id}"))
    return taken


@retried
def release_ranges(engine: Engine, run_id: str, spans: Sequence[Span] | None = None) -> None:
    """A relabel run's ranges (those of ``spans`` only, if given) that nothing will answer."""
    query = pending_ranges.delete().where(pending_ranges.c.run_id == run_id)
    with engine.begin() as conn:
        for part in [None] if spans is None else batches([span.lo for span in spans]):
            conn.execute(query if part is None else query.where(pending_ranges.c.lo.in_(part)))


def failed_labelsets(engine: Engine, model_id: int, reason: str | None = None) -> list[str]:
    """Label sets that have failed results of these weights (optionally for one reason)."""
    query = sa.select(results.c.labelset_id).distinct().where(results.c.model_id == model_id,
                                                              results.c.status == "failed")
    if reason is not None:
        query = query.where(results.c.reason == reason)
    with engine.connect() as conn:
        return list(conn.scalars(query))


def result_filter(uri_prefix: str | None = None, **where: str | int | bool | None
                  ) -> list[sa.ColumnElement[bool]]:
    """Conditions on results: URIs under a prefix, and columns equal to values (None: any)."""
    found = [results.c.uri.startswith(uri_prefix, autoescape=True)] if uri_prefix else []
    return found + [results.c[column] == value for column, value in where.items()
                    if value is not None]


def iter_results(engine: Engine, *, uri_prefix: str | None = None, batch: int = 1000,
                 **where: str | int | bool | None) -> Iterator[sa.RowMapping]:
    """Stream results (server-side cursor on PostgreSQL), oldest first, filtered by columns."""
    query = sa.select(results).where(*result_filter(uri_prefix, **where)).order_by(results.c.id)
    with engine.connect() as conn:
        yield from conn.execution_options(yield_per=batch).execute(query).mappings()


@retried
def forget_signed_failures(engine: Engine, model_id: int, reason: str | None = None) -> int:
    """Delete failed results whose URIs were signed (their signatures are not stored, so they
    cannot be fetched again from here): the next listing of their source sends them again."""
    query = results.delete().where(results.c.model_id == model_id, results.c.status == "failed",
                                   results.c.signed.is_(True),
                                   *([results.c.reason == reason] if reason else []))
    with engine.begin() as conn:
        return int(conn.execute(query).rowcount)


def failed_file_roots(engine: Engine, model_id: int, labelset_id: str, reason: str | None
                      ) -> list[str]:
    """The folders the runs of these failed images could read: their retry may read them too."""
    failed = sa.select(results.c.run_id).where(
        results.c.model_id == model_id, results.c.labelset_id == labelset_id,
        results.c.status == "failed", *([results.c.reason == reason] if reason else []))
    with engine.connect() as conn:
        lists = conn.scalars(sa.select(runs.c.file_roots).where(runs.c.id.in_(failed)))
        return sorted({root for roots in lists for root in roots or ()})
