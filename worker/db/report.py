"""The report page's queries: labels' best images, the least confident, failures, scores."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from worker.db.schema import batches, results, runs

Where = Sequence[sa.ColumnElement[bool]]
DONE = results.c.status == "done"
FAILED = results.c.status == "failed"


def label_counts(conn: Connection, where: Where) -> dict[str, int]:
    """Tagged images per top label, most first."""
    rows = conn.execute(sa.select(results.c.top_label, sa.func.count()).where(*where, DONE)
                        .group_by(results.c.top_label).order_by(sa.func.count().desc(),
                                                                results.c.top_label))
    return {str(label): int(n) for label, n in rows}


def _first(conn: Connection, columns: Sequence[sa.Column], where: Where, per_group: int,
           group: sa.Column, *order: sa.ColumnElement) -> list[sa.RowMapping]:
    """The first ``per_group`` rows of each ``group`` in ``order``, grouped."""
    rank = sa.func.row_number().over(partition_by=group, order_by=order).label("rank")
    ranked = sa.select(*columns, rank).where(*where).subquery()
    return list(conn.execute(sa.select(*(ranked.c[c.name] for c in columns))
                             .where(ranked.c.rank <= per_group)
                             .order_by(ranked.c[group.name], ranked.c.rank)).mappings())


def best_per_label(conn: Connection, where: Where, per_label: int) -> list[sa.RowMapping]:
    """Each label's ``per_label`` highest-scoring images (``uri``, ``top_label``, ``top_score``)."""
    columns = (results.c.uri, results.c.top_label, results.c.top_score)
    return _first(conn, columns, [*where, DONE], per_label, results.c.top_label,
                  results.c.top_score.desc(), results.c.id)


def least_confident(conn: Connection, where: Where, limit: int) -> list[sa.RowMapping]:
    """The tagged images whose best label scored lowest: what to review first."""
    return list(conn.execute(sa.select(results.c.uri, results.c.top_label, results.c.top_score,
                                       results.c.labels)
                             .where(*where, DONE)
                             .order_by(results.c.top_score, results.c.id).limit(limit)).mappings())


def failure_counts(conn: Connection, where: Where) -> dict[str, int]:
    """Failed images per reason, most first."""
    rows = conn.execute(sa.select(results.c.reason, sa.func.count()).where(*where, FAILED)
                        .group_by(results.c.reason).order_by(sa.func.count().desc(),
                                                             results.c.reason))
    return {str(reason): int(n) for reason, n in rows}


def failures(conn: Connection, where: Where, per_reason: int) -> list[sa.RowMapping]:
    """The first ``per_reason`` failures of each reason (``uri``, ``reason``, ``error``)."""
    columns = (results.c.uri, results.c.reason, results.c.error)
    return _first(conn, columns, [*where, FAILED], per_reason, results.c.reason, results.c.id)


def score_range(conn: Connection, where: Where) -> tuple[float, float] | None:
    """The lowest and highest best-label score of the tagged images; None if there are none."""
    low, high = conn.execute(sa.select(sa.func.min(results.c.top_score),
                                       sa.func.max(results.c.top_score)).where(*where, DONE)).one()
    return None if low is None else (float(low), float(high))


def score_histogram(conn: Connection, where: Where, edges: Sequence[float]) -> list[int]:
    """How many tagged images have a best score in each step between ``edges`` (the last
    step holds its upper edge too)."""
    # CASE, not floor() or a cast: SQLite has no floor() by default and PostgreSQL's cast rounds.
    bins = len(edges) - 1
    if bins == 1:  # every score the same: one bar, and a CASE needs a WHEN
        return [int(conn.scalar(sa.select(sa.func.count()).where(*where, DONE)) or 0)]
    step = sa.case(*((results.c.top_score < edges[i + 1], i) for i in range(bins - 1)),
                   else_=bins - 1)
    counts = [0] * bins
    for index, n in conn.execute(sa.select(step, sa.func.count()).where(*where, DONE)
                                 .group_by(step)):
        counts[int(index)] = int(n)
    return counts


def runtimes(conn: Connection, where: Where) -> list[str]:
    """The runtimes (backend and precision) that computed these labels."""
    return sorted(conn.scalars(sa.select(results.c.runtime).distinct()
                               .where(*where, DONE, results.c.runtime.is_not(None))))


def file_roots(conn: Connection, uri_hashes: Sequence[str]) -> list[str]:
    """The folders that the runs of any result of these images (by URI hash) could read files
    from: their previews may too. A relabel run reads no file, so its images' folders are
    those of the runs that tagged them."""
    run_ids: set[str] = set()
    for part in batches(sorted(set(uri_hashes))):
        run_ids.update(conn.scalars(sa.select(results.c.run_id).distinct().where(
            results.c.uri_hash.in_(part), results.c.run_id.is_not(None))))
    lists = conn.scalars(sa.select(runs.c.file_roots).where(runs.c.id.in_(sorted(run_ids))))
    return sorted({root for roots in lists for root in roots or ()})


def last_result_at(conn: Connection, run_id: str) -> datetime | None:
    """When the run's last result was written."""
    return conn.scalar(sa.select(sa.func.max(results.c.updated_at))
                       .where(results.c.run_id == run_id))
