"""Per-label thresholds of a label set version: under its threshold a label is unsure."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from worker.core.judgement import propose_threshold
from worker.db import corrections
from worker.db.review_tables import thresholds
from worker.db.schema import insert, retried


def of(conn: Connection, labelset_id: str) -> dict[str, float]:
    """{label: threshold} of a label set version (labels without one are absent)."""
    rows = conn.execute(sa.select(thresholds.c.label, thresholds.c.threshold)
                        .where(thresholds.c.labelset_id == labelset_id))
    return {label: float(value) for label, value in rows}


def described(engine: Engine, labelset_id: str) -> dict[str, dict[str, object]]:
    """Each threshold with how it was set: {label: {threshold, precision, set_by, set_at}}."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(thresholds).where(thresholds.c.labelset_id == labelset_id))
        return {row.label: {"threshold": row.threshold, "precision": row.precision,
                            "set_by": row.set_by, "set_at": row.set_at} for row in rows}


@retried
def put(engine: Engine, labelset_id: str, label: str, threshold: float | None, set_by: str,
        precision: float | None = None) -> None:
    """Set a label's threshold (None removes it); ``precision``: what it was proposed for."""
    with engine.begin() as conn:
        if threshold is None:
            conn.execute(thresholds.delete().where(thresholds.c.labelset_id == labelset_id,
                                                   thresholds.c.label == label))
            return
        stmt = insert(conn, thresholds).values(
            labelset_id=labelset_id, label=label, threshold=threshold, precision=precision,
            set_by=set_by, set_at=datetime.now(UTC))
        conn.execute(stmt.on_conflict_do_update(
            index_elements=["labelset_id", "label"],
            set_={name: stmt.excluded[name] for name in ("threshold", "precision", "set_by",
                                                           "set_at")}))


def propose(engine: Engine, labelset_id: str, root_id: str, precision: float, set_by: str
            ) -> dict[str, float | None]:
    """Set each reviewed label's threshold to the lowest score that keeps ``precision`` on the
    reviewed images it is the top label of; {label: threshold, or None where none does}."""
    reviewed: dict[str, list[tuple[float, bool]]] = {}
    for top, score, verdicts in corrections.scored(engine, labelset_id, root_id):
        truth = corrections.label_truth(verdicts, top)
        if truth is not None:
            reviewed.setdefault(top, []).append((score, truth))
    proposed = {label: propose_threshold(pairs, precision)
                for label, pairs in sorted(reviewed.items())}
    for label, value in proposed.items():
        if value is not None:
            put(engine, labelset_id, label, value, set_by, precision)
    return proposed
