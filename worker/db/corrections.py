"""Reviewers' corrections: add them, read them by image content, for learning and for export.

Corrections are kept by image content (its SHA-256: copies share them) under the zero-shot
label set that learned versions adapt (worker/db/learned.py ``root_of``). They live in their
own table: no run writes it, so no later run overwrites one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from worker.core.contract import uri_hash
from worker.core.judgement import RIGHT, Verdicts
from worker.core.redact import stored_uri
from worker.db import images
from worker.db.review_tables import corrections
from worker.db.schema import batches, insert, results, retried


@dataclass(frozen=True)
class Correction:
    """One verdict on one label of one image's content."""

    content_sha256: str
    uri: str
    label: str
    verdict: str


def _upsert(conn: Connection, labelset_id: str, reviewer: str, rows: Sequence[Correction]
            ) -> None:
    """Store verdicts (the latest one on a label wins); a right label replaces any other
    right label of the same image: an image has one."""
    current = datetime.now(UTC)
    rights = sorted({c.content_sha256 for c in rows if c.verdict == RIGHT})
    for part in batches(rights):  # their right labels go; the new ones are written below
        conn.execute(corrections.delete().where(
            corrections.c.labelset_id == labelset_id, corrections.c.verdict == RIGHT,
            corrections.c.content_sha256.in_(part)))
    stmt = insert(conn, corrections)
    stmt = stmt.on_conflict_do_update(
        index_elements=["labelset_id", "content_sha256", "label"],
        set_={name: stmt.excluded[name] for name in ("uri", "verdict", "reviewer",
                                                       "created_at")})
    latest = {(c.content_sha256, c.label): c for c in rows}  # one row per key per statement
    conn.execute(stmt, [{"content_sha256": c.content_sha256, "uri": stored_uri(c.uri),
                         "labelset_id": labelset_id, "label": c.label, "verdict": c.verdict,
                         "reviewer": reviewer, "created_at": current}
                        for c in latest.values()])


@retried
def add(engine: Engine, labelset_id: str, reviewer: str, rows: Sequence[Correction]) -> None:
    """Store reviewers' verdicts under a zero-shot label set, in one transaction."""
    if rows:
        with engine.begin() as conn:
            _upsert(conn, labelset_id, reviewer, rows)


def for_contents(conn: Connection, labelset_id: str, shas: Iterable[str | None]
                 ) -> dict[str, Verdicts]:
    """The verdicts on these image contents (hex SHA-256) under a zero-shot label set."""
    wanted = sorted({sha for sha in shas if sha})
    found: dict[str, tuple[str | None, set[str], str | None]] = {}
    for part in batches(wanted):
        rows = conn.execute(sa.select(corrections.c.content_sha256, corrections.c.label,
                                      corrections.c.verdict, corrections.c.reviewer)
                            .where(corrections.c.labelset_id == labelset_id,
                                   corrections.c.content_sha256.in_(part)))
        for sha, label, verdict, reviewer in rows:
            _, wrong, _ = found.setdefault(sha, (None, set(), None))
            if verdict == RIGHT:
                found[sha] = (label, wrong, reviewer)
            else:
                wrong.add(label)
    return {sha: Verdicts(right, frozenset(wrong), by) for sha, (right, wrong, by)
            in found.items()}


def training_set(engine: Engine, labelset_id: str) -> list[Correction]:
    """Every verdict under a zero-shot label set, oldest first: what learning learns from."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(corrections.c.content_sha256, corrections.c.uri,
                                      corrections.c.label, corrections.c.verdict)
                            .where(corrections.c.labelset_id == labelset_id)
                            .order_by(corrections.c.id))
        return [Correction(*row) for row in rows]


def iter_all(engine: Engine, labelset_id: str | None = None, batch: int = 1000
             ) -> Iterator[sa.RowMapping]:
    """Every correction (of one label set, if given), oldest first, streamed."""
    query = sa.select(corrections).order_by(corrections.c.id)
    if labelset_id:
        query = query.where(corrections.c.labelset_id == labelset_id)
    with engine.connect() as conn:
        yield from conn.execution_options(yield_per=batch).execute(query).mappings()


def counts(engine: Engine, labelset_id: str) -> dict[str, dict[str, int]]:
    """Verdicts per label: {label: {"right": n, "wrong": n}}."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(corrections.c.label, corrections.c.verdict,
                                      sa.func.count())
                            .where(corrections.c.labelset_id == labelset_id)
                            .group_by(corrections.c.label, corrections.c.verdict))
        found: dict[str, dict[str, int]] = {}
        for label, verdict, n in rows:
            found.setdefault(label, {"right": 0, "wrong": 0})[verdict] = int(n)
    return found


def contents_of(engine: Engine, uris: Sequence[str]) -> dict[str, str]:
    """The content SHA-256 of each URI's newest done result, by URI (those never tagged are
    absent)."""
    by_hash = {uri_hash(uri): uri for uri in uris}
    found: dict[str, str] = {}
    with engine.connect() as conn:
        for part in batches(sorted(by_hash)):
            rows = conn.execute(sa.select(results.c.uri_hash, results.c.content_sha256)
                                .where(results.c.uri_hash.in_(part), results.c.status == "done",
                                       results.c.content_sha256.is_not(None))
                                .order_by(results.c.updated_at, results.c.id))
            for key, sha in rows:
                found[by_hash[key]] = sha  # the newest last
    return found


def scored(engine: Engine, labelset_id: str, root_id: str
           ) -> Iterator[tuple[str, float, Verdicts | None]]:
    """(top label, top score, verdicts) of every reviewed image scored by a label set version:
    what a threshold is proposed from (images found through what their fetches found)."""
    with engine.connect() as conn:
        reviewed = conn.execute(sa.select(corrections.c.content_sha256).distinct()
                                .where(corrections.c.labelset_id == root_id)).scalars().all()
        rows = []
        for part in batches(sorted(reviewed)):
            rows += conn.execute(sa.select(results.c.top_label, results.c.top_score,
                                           results.c.content_sha256)
                                 .where(results.c.labelset_id == labelset_id,
                                        results.c.status == "done",
                                        results.c.uri_hash.in_(images.with_contents(part))))
        verdicts = for_contents(conn, root_id, (row.content_sha256 for row in rows))
    for row in rows:
        yield row.top_label, float(row.top_score), verdicts.get(row.content_sha256)


def label_truth(verdicts: Verdicts | None, label: str) -> bool | None:
    """Whether ``label`` is right for an image with these verdicts; None if nobody said."""
    if verdicts is None:
        return None
    if verdicts.right is not None:
        return verdicts.right == label
    return False if label in verdicts.wrong else None
