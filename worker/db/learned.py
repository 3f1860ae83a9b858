"""Label set versions learned from corrections: their label vectors, reports and diffs.

A learned version is a label set of its own (its id covers the digest of its vectors,
worker/core/labels.py), stored in ``labelsets`` like any other; its vectors are stored here
and take the place of the text tower's wherever it is scored (worker/loop/labelstore.py).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from worker.core.labels import LabelSet
from worker.db.review_tables import learned
from worker.db.schema import insert, labelsets, retried, text_embeddings


@dataclass(frozen=True)
class Vectors:
    """(rows, dim) float32 label vectors, little-endian bytes; logits = scale * image @ them.T."""

    rows: int
    dim: int
    scale: float
    data: bytes

    def digest(self) -> str:
        """What identifies these vectors: a learned label set's id covers it."""
        header = struct.pack("<iid", self.rows, self.dim, self.scale)
        return hashlib.sha256(header + self.data).hexdigest()[:16]


@dataclass(frozen=True)
class Version:
    """A learned label set version as the pages and commands show it."""

    labelset_id: str
    root_id: str
    parent_id: str
    model: str
    method: str
    report: Mapping[str, Any]
    run_id: str | None
    changes: Mapping[str, Any] | None
    created_at: Any


@retried
def save(engine: Engine, labelset: LabelSet, root_id: str, parent_id: str, model: str,
         method: str, vectors: Vectors, report: Mapping[str, Any]) -> None:
    """Store a learned version: its label set and its vectors, in one transaction."""
    with engine.begin() as conn:
        conn.execute(insert(conn, labelsets)
                     .values(id=labelset.id, name=labelset.name, body=labelset.to_json())
                     .on_conflict_do_nothing(index_elements=["id"]))
        conn.execute(insert(conn, learned).values(
            labelset_id=labelset.id, root_id=root_id, parent_id=parent_id, model=model,
            method=method, rows=vectors.rows, dim=vectors.dim, scale=vectors.scale,
            data=vectors.data, report=dict(report)).on_conflict_do_nothing(
            index_elements=["labelset_id"]))


@retried
def load_vectors(engine: Engine, labelset_id: str) -> Vectors | None:
    """A learned version's label vectors; None for a label set that was not learned."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(learned.c.rows, learned.c.dim, learned.c.scale,
                                     learned.c.data)
                           .where(learned.c.labelset_id == labelset_id)).first()
    return Vectors(row.rows, row.dim, float(row.scale), bytes(row.data)) if row else None


_VERSION = (learned.c.labelset_id, learned.c.root_id, learned.c.parent_id, learned.c.model,
            learned.c.method, learned.c.report, learned.c.run_id, learned.c.changes,
            learned.c.created_at)


def versions(engine: Engine, root_id: str) -> list[Version]:
    """The learned versions of a zero-shot label set, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(*_VERSION).where(learned.c.root_id == root_id)
                            .order_by(learned.c.created_at.desc(),
                                      learned.c.labelset_id)).all()
    return [Version(*row) for row in rows]


def version(engine: Engine, labelset_id: str) -> Version | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(*_VERSION)
                           .where(learned.c.labelset_id == labelset_id)).first()
    return Version(*row) if row else None


def root_of(engine: Engine, labelset_id: str) -> str:
    """The zero-shot label set a version adapts (itself if it is one): corrections are kept
    under it, so that every version of it shares them."""
    with engine.connect() as conn:
        root = conn.scalar(sa.select(learned.c.root_id)
                           .where(learned.c.labelset_id == labelset_id))
    return root or labelset_id


@retried
def set_run(engine: Engine, labelset_id: str, run_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(learned.update().where(learned.c.labelset_id == labelset_id)
                     .values(run_id=run_id))


@retried
def set_changes(engine: Engine, labelset_id: str, changes: Mapping[str, Any]) -> None:
    with engine.begin() as conn:
        conn.execute(learned.update().where(learned.c.labelset_id == labelset_id)
                     .values(changes=dict(changes)))


def text_vectors(engine: Engine, model_id: int, labelset_id: str
                 ) -> tuple[int, int, bytes] | None:
    """The text tower's vectors of a zero-shot label set under the weights ``model_id``, as a
    worker stored them (the newest, whichever runtime encoded them); None before any worker
    scored it."""
    table = text_embeddings
    with engine.connect() as conn:
        row = conn.execute(sa.select(table.c.rows, table.c.dim, table.c.data).where(
            table.c.model_id == model_id, table.c.labelset_id == labelset_id)
            .order_by(table.c.created_at.desc(), table.c.encoder)).first()
    return (row.rows, row.dim, bytes(row.data)) if row else None
