"""The worker's database calls: a run's folders, deliveries, dedupe lookups, result writes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from worker.core.contract import Item, Result, uri_hash
from worker.core.embedding import key_of
from worker.core.scored import SCORED, Scored
from worker.db import bulk, embeddings, images, models, schema
from worker.db.schema import (
    batches,
    deliveries,
    insert,
    now,
    pending,
    pending_ranges,
    results,
    retried,
    runs,
)

if TYPE_CHECKING:
    import numpy as np


@retried
def run_file_roots(engine: Engine, run_id: str) -> tuple[list[str], bool]:
    """The folders (and linked files) this run may read, and whether its listing has ended
    (until then a listing may still add the targets of links it meets)."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(runs.c.file_roots, runs.c.finished_at)
                           .where(runs.c.id == run_id)).first()
    return (list(row.file_roots or []), row.finished_at is not None) if row else ([], True)


@dataclass(frozen=True)
class Delivery:
    """What the workers recorded about one chunk message, this start included."""

    starts: int
    retries: int  # scheduled by workers: the message's own retries header is not trusted
    cancelled: bool  # its run was withdrawn

    @property
    def deaths(self) -> int:
        """Starts that were neither the first nor a retry: the worker died (or was killed)."""
        return self.starts - self.retries - 1


@retried
def start_delivery(engine: Engine, task_id: str, run_id: str | None, images: int) -> Delivery:
    """Record one more start of this chunk message (now in flight)."""
    with engine.begin() as conn:
        stmt = insert(conn, deliveries).values(task_id=task_id, count=1, run_id=run_id,
                                               images=images)
        stmt = stmt.on_conflict_do_update(
            index_elements=["task_id"],
            set_={"count": deliveries.c.count + 1, "updated_at": now, "finished_at": None,
                  "images": images},
        ).returning(deliveries.c.count, deliveries.c.retries)
        starts, retries = conn.execute(stmt).one()
        withdrawn = run_id is not None and _cancelled(conn, run_id)
    return Delivery(int(starts), int(retries), withdrawn)


def _cancelled(conn: Connection, run_id: str) -> bool:
    return bool(conn.scalar(sa.select(runs.c.cancelled_at.is_not(None))
                            .where(runs.c.id == run_id)))


@retried
def cancelled(engine: Engine, run_id: str) -> bool:
    """Whether the run was withdrawn (`producer cancel`, a `producer tag` stopped)."""
    with engine.connect() as conn:
        return _cancelled(conn, run_id)


@retried
def grant_retry(engine: Engine, task_id: str, limit: int) -> int | None:
    """Record that a worker sends this message again later: which retry that is (1, 2, ...),
    or None once ``limit`` retries were granted. Until it starts again it is not in flight."""
    if limit <= 0:
        return None
    with engine.begin() as conn:
        # An upsert: the start may have failed to be recorded (the database was away then).
        stmt = insert(conn, deliveries).values(task_id=task_id, count=1, retries=1,
                                               finished_at=now)
        stmt = stmt.on_conflict_do_update(
            index_elements=["task_id"], where=deliveries.c.retries < limit,
            set_={"retries": deliveries.c.retries + 1, "finished_at": now, "updated_at": now},
        ).returning(deliveries.c.retries)
        granted = conn.execute(stmt).scalar()
    return None if granted is None else int(granted)


@retried
def done_by_content(engine: Engine, model_id: int, labelset_id: str, hashes: Iterable[str]
                    ) -> dict[str, list[dict[str, Any]]]:
    """Labels these weights computed for these content hashes (identical bytes, other URIs):
    found through the images whose latest fetch was of that content."""
    wanted = {bytes.fromhex(sha) for sha in hashes}
    found: dict[str, list[dict[str, Any]]] = {}
    i, r = schema.images, results
    with engine.connect() as conn:
        for part in batches(sorted({key_of(raw) for raw in wanted})):
            rows = conn.execute(sa.select(i.c.content, r.c.labels, r.c.content_sha256).join_from(
                i, r, sa.and_(r.c.uri_hash == i.c.uri_hash, r.c.model_id == model_id,
                              r.c.labelset_id == labelset_id, r.c.status == "done"))
                .where(i.c.content_key.in_(part)))
            found.update((bytes(row.content).hex(), row.labels) for row in rows
                         if bytes(row.content) in wanted
                         and row.content_sha256 == bytes(row.content).hex())
    return found


@retried
def write_results(engine: Engine, outcomes: Sequence[Result], task_id: str | None = None,
                  keep_embeddings: bool = False) -> None:
    """Upsert results, clear their pending marks and close the delivery, in one transaction;
    with ``keep_embeddings``, the image embeddings computed for them are kept in it too.

    A done result replaces anything; a failure never replaces a done result, so a re-delivered
    chunk that meets a passing fault cannot erase good labels. What each image's fetch found
    is noted in ``images`` in the same transaction.
    """
    kept: dict[str, dict[str, np.ndarray]] = {}
    for outcome in outcomes if keep_embeddings else ():
        if outcome.embedding is not None and outcome.content_sha256:
            kept.setdefault(outcome.identity, {})[outcome.content_sha256] = outcome.embedding
    names = {o.identity: o.model for o in outcomes}
    served = {identity: models.identify(engine, identity, name, dim=_width(kept.get(identity)))
              for identity, name in names.items()}
    rows = list({(r["uri_hash"], r["model_id"], r["labelset_id"]): r for r in (
        {**o.row(), "model_id": served[o.identity].id} for o in outcomes)}.values())
    with engine.begin() as conn:
        _write(conn, rows, task_id)
        images.write(conn, images.rows_of(outcomes))
        for identity, vectors in kept.items():
            embeddings.keep(conn, served[identity], vectors)


def _width(vectors: Mapping[str, np.ndarray] | None) -> int | None:
    return len(next(iter(vectors.values()))) if vectors else None


@retried
def write_scored(engine: Engine, scored: Scored) -> None:
    """A relabel's batch in one transaction: result rows unique by image, model and label set,
    its images whose kept embedding is damaged failed (a failure never replaces a done result
    of the same label set)."""
    copy = engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg2"
    # Rendered before the transaction opens: its connection is held for the writes alone.
    text = bulk.Lines(scored.range.shared(), SCORED).text(scored.lines()) if copy else ""
    failed = scored.failed_rows()
    with engine.begin() as conn:
        if copy:
            bulk.write_lines(conn, text)
        else:
            write_by_statements(conn, scored.done_rows(), None)
        if failed:
            _write(conn, failed, None)


def _write(conn: Connection, rows: list[dict[str, Any]], task_id: str | None) -> None:
    if bulk.uses_copy(conn):
        bulk.write_chunk(conn, rows, task_id)
    else:
        write_by_statements(conn, rows, task_id)


@retried
def drop_withdrawn(engine: Engine, task_id: str, run_id: str, items: Sequence[Item]) -> None:
    """A chunk of a withdrawn run is not tagged: its delivery is over, and its images stop
    being pending (a listing still running when the run was cancelled marked them)."""
    with engine.begin() as conn:
        for part in batches(sorted({uri_hash(item.uri) for item in items})):
            conn.execute(pending.delete().where(pending.c.run_id == run_id,
                                                pending.c.uri_hash.in_(part)))
        conn.execute(deliveries.update().where(deliveries.c.task_id == task_id)
                     .values(finished_at=now))


@retried
def finish_range(engine: Engine, run_id: str, lo: int, task_id: str, error: str | None = None
                 ) -> None:
    """A relabel range is answered: its images are no longer pending, its delivery is over;
    ``error``: it was given up, and its run says why (its state becomes ``stopped``)."""
    with engine.begin() as conn:
        conn.execute(pending_ranges.delete().where(pending_ranges.c.run_id == run_id,
                                                   pending_ranges.c.lo == lo))
        conn.execute(deliveries.update().where(deliveries.c.task_id == task_id)
                     .values(finished_at=now))
        if error:
            conn.execute(runs.update().where(runs.c.id == run_id, runs.c.error.is_(None))
                         .values(error=error))


def write_by_statements(conn: Connection, rows: list[dict[str, Any]], task_id: str | None
                        ) -> None:
    """The same writes as ``bulk.write_chunk``, as SQLAlchemy statements (SQLite)."""
    if rows:
        stmt = insert(conn, results)
        updatable = [c.name for c in results.columns if c.name not in {"id", "created_at"}]
        stmt = stmt.on_conflict_do_update(
            index_elements=["uri_hash", "model_id", "labelset_id"],
            set_={**{name: stmt.excluded[name] for name in updatable}, "updated_at": now},
            where=sa.or_(results.c.status != "done", stmt.excluded.status == "done"),
        )
        conn.execute(stmt, rows)  # batched by SQLAlchemy within the bound-variable limit
        for (model, labelset_id), hashes in _group(rows).items():
            for part in batches(hashes):
                conn.execute(pending.delete().where(
                    pending.c.model == model, pending.c.labelset_id == labelset_id,
                    pending.c.uri_hash.in_(part)))
    if task_id:
        conn.execute(deliveries.update().where(deliveries.c.task_id == task_id)
                     .values(finished_at=now))


def _group(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    groups: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["labelset_id"]), []).append(row["uri_hash"])
    return groups
