"""The workbench's reads of results: a page of a gallery, of failures, of changed labels, and
an image's results. Pages are keyset-paged on indexed columns: as fast at a million images as
at a hundred."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from worker.db import images
from worker.db.schema import results, runs

PHOTO = (results.c.id, results.c.uri, results.c.uri_hash, results.c.content_sha256,
         results.c.top_label, results.c.top_score, results.c.labels, results.c.labelset_id,
         results.c.model)
After = tuple[float, int] | None  # (score, id) of the last image of the page before


def run_row(conn: Connection, run_id: str) -> sa.RowMapping | None:
    """A run as recorded, without counting its images (`producer status` counts them)."""
    return conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().first()


def latest_runs(conn: Connection, limit: int) -> list[sa.RowMapping]:
    """The newest runs as recorded, without counting their images."""
    return list(conn.execute(sa.select(runs).order_by(runs.c.started_at.desc()).limit(limit))
                .mappings())


def label_counts(conn: Connection, run_id: str) -> dict[str, int]:
    """A run's tagged images per top label, most first (ix_results_run_label_score alone)."""
    count = sa.func.count()
    rows = conn.execute(sa.select(results.c.top_label, count)
                        .where(results.c.run_id == run_id, results.c.top_label.is_not(None))
                        .group_by(results.c.top_label).order_by(count.desc(),
                                                                results.c.top_label))
    return {str(label): int(n) for label, n in rows}


def gallery(conn: Connection, run_id: str, label: str, after: After, limit: int
            ) -> list[sa.RowMapping]:
    """A run's images whose top label is ``label``, least confident first, ``limit`` of them
    after ``after`` (ix_results_run_label_score)."""
    query = sa.select(*PHOTO).where(results.c.run_id == run_id, results.c.top_label == label)
    if after is not None:
        query = query.where(sa.tuple_(results.c.top_score, results.c.id) > sa.tuple_(*after))
    return list(conn.execute(query.order_by(results.c.top_score, results.c.id).limit(limit))
                .mappings())


def failures(conn: Connection, run_id: str, reason: str | None, after: int | None, limit: int
             ) -> list[sa.RowMapping]:
    """A run's failed images (of one reason, if given), in id order, after id ``after``."""
    query = sa.select(results.c.id, results.c.uri, results.c.uri_hash, results.c.reason,
                      results.c.error).where(results.c.run_id == run_id,
                                             results.c.status == "failed")
    if reason:
        query = query.where(results.c.reason == reason)
    if after is not None:
        query = query.where(results.c.id > after)
    return list(conn.execute(query.order_by(results.c.id).limit(limit)).mappings())


def image(conn: Connection, key: str) -> list[sa.RowMapping]:
    """Every result of one image (by URI hash): each model and label set, newest first."""
    return list(conn.execute(sa.select(results).where(results.c.uri_hash == key)
                             .order_by(results.c.updated_at.desc(), results.c.id.desc()))
                .mappings())


def changed(conn: Connection, run_id: str, before_labelset: str, label: str, after: After,
            limit: int) -> list[sa.RowMapping]:
    """Images of a relabel run that took ``label`` from another label under
    ``before_labelset``, least confident first; with the label they had (``before``)."""
    old = results.alias("old")
    query = (sa.select(*PHOTO, old.c.top_label.label("before"))
             .select_from(results.join(old, sa.and_(old.c.uri_hash == results.c.uri_hash,
                                                    old.c.model_id == results.c.model_id)))
             .where(results.c.run_id == run_id, results.c.top_label == label,
                    old.c.labelset_id == before_labelset, old.c.status == "done",
                    old.c.top_label != label))
    if after is not None:
        query = query.where(sa.tuple_(results.c.top_score, results.c.id) > sa.tuple_(*after))
    return list(conn.execute(query.order_by(results.c.top_score, results.c.id).limit(limit))
                .mappings())


def change_counts(conn: Connection, run_id: str, before_labelset: str) -> list[tuple[Any, ...]]:
    """How many images of a relabel run changed label, per (before, after): most first."""
    old = results.alias("old")
    count = sa.func.count()
    rows = conn.execute(
        sa.select(old.c.top_label, results.c.top_label, count)
        .select_from(results.join(old, sa.and_(old.c.uri_hash == results.c.uri_hash,
                                               old.c.model_id == results.c.model_id)))
        .where(results.c.run_id == run_id, results.c.status == "done",
               old.c.labelset_id == before_labelset, old.c.status == "done",
               old.c.top_label != results.c.top_label)
        .group_by(old.c.top_label, results.c.top_label)
        .order_by(count.desc(), old.c.top_label, results.c.top_label))
    return [tuple(row) for row in rows]


def top_scores(conn: Connection, model_id: int, labelset_id: str, shas: Sequence[str]
               ) -> dict[str, float]:
    """The top score of each of these image contents under a label set and the weights
    ``model_id`` (one per content): found through the images that were fetched with them."""
    rows = conn.execute(sa.select(results.c.content_sha256, results.c.top_score).where(
        results.c.model_id == model_id, results.c.labelset_id == labelset_id,
        results.c.status == "done", results.c.uri_hash.in_(images.with_contents(shas))))
    return {sha: float(score) for sha, score in rows}


def page_after(rows: Sequence[sa.RowMapping], limit: int) -> After:
    """Where the next page starts: after the last row of a full page; None at the end."""
    if len(rows) < limit:
        return None
    return float(rows[-1]["top_score"]), int(rows[-1]["id"])
