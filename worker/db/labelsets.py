"""Label sets and their text embeddings, stored once for the producer and every worker."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from worker.core.labels import LabelSet
from worker.db.schema import insert, labelsets, retried, text_embeddings


@retried
def save_labelset(engine: Engine, labelset: LabelSet) -> None:
    with engine.begin() as conn:
        conn.execute(insert(conn, labelsets)
                     .values(id=labelset.id, name=labelset.name, body=labelset.to_json())
                     .on_conflict_do_nothing(index_elements=["id"]))


@retried
def load_labelset(engine: Engine, labelset_id: str) -> LabelSet | None:
    with engine.connect() as conn:
        body = conn.scalar(sa.select(labelsets.c.body).where(labelsets.c.id == labelset_id))
    return LabelSet.from_json(body) if body is not None else None


@retried
def load_text_embeddings(engine: Engine, model_id: int, labelset_id: str, encoder: str
                         ) -> tuple[int, int, bytes] | None:
    table = text_embeddings
    with engine.connect() as conn:
        row = conn.execute(sa.select(table.c.rows, table.c.dim, table.c.data).where(
            table.c.model_id == model_id, table.c.labelset_id == labelset_id,
            table.c.encoder == encoder)).first()
    return (row.rows, row.dim, bytes(row.data)) if row else None


@retried
def save_text_embeddings(engine: Engine, model_id: int, labelset_id: str, encoder: str,
                         rows: int, dim: int, data: bytes) -> None:
    with engine.begin() as conn:
        conn.execute(insert(conn, text_embeddings)
                     .values(model_id=model_id, labelset_id=labelset_id, encoder=encoder,
                             rows=rows, dim=dim, data=data)
                     .on_conflict_do_nothing(index_elements=["model_id", "labelset_id",
                                                             "encoder"]))
