"""A model is its weights; each image is one row at the content its own fetch found.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

- models (was embedding_models): a model's id, its weights digest, the name it was served as.
  Every name results were stored under becomes a model without a digest ("legacy"): a worker
  whose checkpoint files are older than its first result takes it over (worker/db/models.py);
  otherwise its rows stay as they are, shown and exported, never scored from or counted done.
- results.model_id: the weights that computed a result, part of its identity (the name stays,
  as what it was served as).
- text_embeddings: keyed by model id instead of name.
- images: one row per URI with what its latest fetch found (version, content); filled from the
  newest result of each image whose content was computed from its bytes (never one scored from
  a kept embedding: its content came from a message). Relabel reads this, not results.
- results loses two indexes every row written paid for: by content (found through images now)
  and by (status, reason), which becomes an index of failures' reasons only.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

from worker.core.contract import KEPT_RUNTIME
from worker.core.embedding import key_of

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_Id = sa.SmallInteger().with_variant(sa.Integer(), "sqlite")
_Time = sa.DateTime(timezone=True)
BATCH = 5000
# A result whose content was computed from its bytes (one scored from a kept embedding took it
# from the message that asked for it).
FETCHED = f"content_sha256 IS NOT NULL AND (runtime IS NULL OR runtime <> '{KEPT_RUNTIME}')"


def upgrade() -> None:
    bind = op.get_bind()
    _models(bind)
    _results(bind)
    _text_embeddings(bind)
    op.create_table(
        "images",
        sa.Column("uri_hash", sa.String(64), primary_key=True),
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("signed", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("item_key", sa.Text),
        sa.Column("source_version", sa.Text),
        sa.Column("content_key", sa.BigInteger, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.Column("updated_at", _Time, nullable=False, server_default=sa.func.current_timestamp()),
    )
    if bind.dialect.name == "postgresql":
        op.execute(sa.text(IMAGES_FROM_RESULTS))
    else:
        _images_by_batches(bind)
    op.create_index("ix_images_content", "images", ["content_key"])


def _models(bind: sa.Connection) -> None:
    """embedding_models -> models, plus a legacy model for every name results were stored under;
    ``since``: the first result stored under the name (what adoption compares files with)."""
    models = op.create_table(
        "models",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("weights", sa.Text, unique=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("dim", sa.Integer),
        sa.Column("since", _Time, nullable=False, server_default=sa.func.current_timestamp()),
        sa.Column("seen_at", _Time, nullable=False, server_default=sa.func.current_timestamp()),
    )
    first: dict[str, datetime] = {}
    for name in ("results", "text_embeddings"):
        old = sa.table(name, sa.column("model"), sa.column("created_at", _Time))
        for model, created in bind.execute(sa.select(old.c.model, sa.func.min(old.c.created_at))
                                           .group_by(old.c.model)):
            first.setdefault(model, created)
    current = datetime.now(UTC)
    kept = bind.execute(sa.text("SELECT id, model, dim FROM embedding_models")).all()
    rows = [{"id": i, "name": name, "dim": dim, "since": first.get(name) or current}
            for i, name, dim in kept]
    named = {row["name"] for row in rows}
    rows += [{"name": name, "dim": None, "since": since or current}
             for name, since in sorted(first.items()) if name not in named]
    for part in ([r for r in rows if "id" in r], [r for r in rows if "id" not in r]):
        if part:
            bind.execute(models.insert(), part)
    if bind.dialect.name == "postgresql":  # ids were given: the sequence goes on after them
        op.execute(sa.text("SELECT setval(pg_get_serial_sequence('models', 'id'), "
                           "coalesce(max(id), 0) + 1, false) FROM models"))
    op.drop_table("embedding_models")


FAILED = sa.text("status = 'failed'")


def _results(bind: sa.Connection) -> None:
    op.drop_index("ix_results_content_sha256", "results")
    op.drop_index("ix_results_status_reason", "results")
    op.create_index("ix_results_failed_reason", "results", ["reason"], postgresql_where=FAILED,
                    sqlite_where=FAILED)
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("model_id", sa.SmallInteger))
    op.execute(sa.text("UPDATE results SET model_id = (SELECT m.id FROM models m WHERE "
                       "m.name = results.model)"))
    with op.batch_alter_table("results") as batch:
        batch.alter_column("model_id", existing_type=sa.SmallInteger, nullable=False)
        batch.drop_constraint("uq_results_image", type_="unique")
        batch.create_unique_constraint("uq_results_image", ["uri_hash", "model_id", "labelset_id"])


def _text_embeddings(bind: sa.Connection) -> None:
    """Keyed by model id (a few rows: read, and written back into the new table)."""
    t = sa.table("text_embeddings", *(sa.column(c) for c in (
        "model", "labelset_id", "encoder", "rows", "dim", "data")), sa.column("created_at", _Time))
    m = sa.table("models", sa.column("id"), sa.column("name"), sa.column("weights"))
    old = bind.execute(sa.select(m.c.id.label("model_id"), t.c.labelset_id, t.c.encoder, t.c.rows,
                                 t.c.dim, t.c.data, t.c.created_at)
                       .select_from(t.join(m, sa.and_(m.c.name == t.c.model,
                                                      m.c.weights.is_(None))))).mappings().all()
    op.drop_table("text_embeddings")
    table = _text_table("model_id", sa.SmallInteger)
    if old:
        bind.execute(table.insert(), [dict(row) for row in old])


def _text_table(key: str, kind: Any) -> sa.Table:
    return op.create_table(
        "text_embeddings",
        sa.Column(key, kind, primary_key=True, autoincrement=False),
        sa.Column("labelset_id", sa.String(16), primary_key=True),
        sa.Column("encoder", sa.String(64), primary_key=True),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("created_at", _Time, nullable=False, server_default=sa.func.current_timestamp()),
    )


# The first 8 bytes of the hash as embedding.key_of has them: as a signed int8, sign bit flipped.
IMAGES_FROM_RESULTS = f"""
INSERT INTO images (uri_hash, uri, signed, item_key, source_version, content_key, content,
                    updated_at)
SELECT DISTINCT ON (uri_hash) uri_hash, uri, signed, item_key, source_version,
       (('x' || left(content_sha256, 16))::bit(64)::bigint) # (-9223372036854775808)::bigint,
       decode(content_sha256, 'hex'), updated_at
FROM results WHERE {FETCHED} AND content_sha256 ~ '^[0-9a-f]{{64}}$'
ORDER BY uri_hash, updated_at DESC, id DESC
"""


def _images_by_batches(bind: sa.Connection) -> None:
    """The same on SQLite (no hex decoding in SQL): each image's newest fetched result."""
    table = sa.table("images", *(sa.column(c) for c in (
        "uri_hash", "uri", "signed", "item_key", "source_version", "content_key", "content",
        "updated_at")))
    batch: list[dict[str, Any]] = []
    for row in _newest_fetched(bind):
        try:
            content = bytes.fromhex(row.content_sha256)
        except ValueError:
            continue
        if len(content) != 32:
            continue
        batch.append({"uri_hash": row.uri_hash, "uri": row.uri, "signed": row.signed,
                      "item_key": row.item_key, "source_version": row.source_version,
                      "content_key": key_of(content), "content": content,
                      "updated_at": row.updated_at})
        if len(batch) >= BATCH:
            bind.execute(table.insert(), batch)
            batch = []
    if batch:
        bind.execute(table.insert(), batch)


def _newest_fetched(bind: sa.Connection) -> Iterator[Any]:
    last = None
    rows = bind.execute(sa.text(
        "SELECT uri_hash, uri, signed, item_key, source_version, content_sha256, updated_at "
        f"FROM results WHERE {FETCHED} ORDER BY uri_hash, updated_at DESC, id DESC"))
    for row in rows:
        if row.uri_hash != last:
            last = row.uri_hash
            yield row


def downgrade() -> None:
    bind = op.get_bind()
    op.drop_index("ix_images_content", "images")
    op.drop_table("images")
    names = dict(bind.execute(sa.text("SELECT id, name FROM models")).all())
    t = sa.table("text_embeddings", *(sa.column(c) for c in (
        "model_id", "labelset_id", "encoder", "rows", "dim", "data")),
        sa.column("created_at", _Time))
    texts = bind.execute(sa.select(t).order_by(t.c.model_id)).mappings()
    back: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in texts:  # two weights served under one name: the first one's stay
        key = (names[row["model_id"]], row["labelset_id"], row["encoder"])
        back.setdefault(key, {**row, "model": key[0]})
    op.drop_table("text_embeddings")
    table = _text_table("model", sa.Text)
    if back:
        bind.execute(table.insert(), [{k: v for k, v in r.items() if k != "model_id"}
                                      for r in back.values()])
    # One result per (image, name, label set) again: the newest.
    op.execute(sa.text("DELETE FROM results WHERE id NOT IN (SELECT max(id) FROM results "
                       "GROUP BY uri_hash, model, labelset_id)"))
    with op.batch_alter_table("results") as batch:
        batch.drop_constraint("uq_results_image", type_="unique")
        batch.drop_column("model_id")
        batch.create_unique_constraint("uq_results_image", ["uri_hash", "model", "labelset_id"])
    op.drop_index("ix_results_failed_reason", "results")
    op.create_index("ix_results_content_sha256", "results", ["content_sha256"])
    op.create_index("ix_results_status_reason", "results", ["status", "reason"])
    _embedding_models(bind)


def _embedding_models(bind: sa.Connection) -> None:
    """models -> embedding_models: one id per name (the first); others' embeddings go."""
    table = op.create_table(
        "embedding_models",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("model", sa.Text, nullable=False, unique=True),
        sa.Column("dim", sa.Integer, nullable=False),
    )
    first: dict[str, tuple[int, int]] = {}
    for i, name, dim in bind.execute(sa.text("SELECT id, name, dim FROM models WHERE dim IS NOT "
                                             "NULL ORDER BY id")):
        first.setdefault(name, (i, dim))
    if first:
        bind.execute(table.insert(), [{"id": i, "model": n, "dim": d}
                                      for n, (i, d) in first.items()])
    keep = [i for i, _ in first.values()] or [-1]
    bind.execute(sa.text("DELETE FROM embeddings WHERE model_id NOT IN :ids")
                 .bindparams(sa.bindparam("ids", expanding=True)), {"ids": keep})
    if bind.dialect.name == "postgresql":
        op.execute(sa.text("SELECT setval(pg_get_serial_sequence('embedding_models', 'id'), "
                           "coalesce(max(id), 0) + 1, false) FROM embedding_models"))
    op.drop_table("models")
