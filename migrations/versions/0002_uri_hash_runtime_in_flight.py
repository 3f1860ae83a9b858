"""URIs indexed by hash, the runtime of each result, skip reasons, in-flight deliveries.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

- results/pending: a btree row holds at most ~2.7 KB, and presigned URLs are longer; the unique
  keys now use sha256(uri) and the text stays unindexed.
- results.runtime: which backend and precision computed the labels.
- runs.skipped_by_reason, runs.error: counted skips and why a listing stopped early;
  runs.file_roots: the folders a run's files may be read from (a --dir run's own folder).
- deliveries.run_id/images/finished_at: chunks in flight, for `producer status`.
- text_embeddings.encoder: embeddings are keyed by what computed them (a cache: rebuilt).
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_time = sa.DateTime(timezone=True)


def _hash(uri: str) -> str:
    return hashlib.sha256(uri.encode("utf-8", "surrogatepass")).hexdigest()


def _fill_hashes() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("UPDATE results SET uri_hash = encode(sha256(convert_to(uri, 'UTF8')), 'hex')")
        return
    rows = bind.execute(sa.text("SELECT id, uri FROM results")).all()
    if rows:
        bind.execute(sa.text("UPDATE results SET uri_hash = :h WHERE id = :i"),
                     [{"h": _hash(uri), "i": i} for i, uri in rows])


def _pending(hashed: bool) -> None:
    """Pending marks are few (images in flight): copy them into a table with the other key."""
    bind = op.get_bind()
    old = sa.table("pending", sa.column("uri"), sa.column("model"), sa.column("labelset_id"),
                   sa.column("run_id"), sa.column("enqueued_at", _time))
    rows = bind.execute(sa.select(old)).mappings().all()
    op.drop_index("ix_pending_run", table_name="pending")
    op.drop_table("pending")
    key = [sa.Column("uri_hash", sa.String(64), primary_key=True)] if hashed else []
    table = op.create_table(
        "pending", *key,
        sa.Column("uri", sa.Text, primary_key=not hashed, nullable=False),
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column("labelset_id", sa.String(16), primary_key=True),
        sa.Column("run_id", sa.String(32)),
        sa.Column("enqueued_at", _time, nullable=False),
    )
    op.create_index("ix_pending_run", "pending", ["run_id"])
    copied = {(_hash(r["uri"]) if hashed else r["uri"], r["model"], r["labelset_id"]):
              {**r, **({"uri_hash": _hash(r["uri"])} if hashed else {})} for r in rows}
    if copied:
        op.bulk_insert(table, list(copied.values()))


def _text_embeddings(with_encoder: bool) -> None:
    op.drop_table("text_embeddings")
    op.create_table(
        "text_embeddings",
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column("labelset_id", sa.String(16), primary_key=True),
        *([sa.Column("encoder", sa.String(64), primary_key=True)] if with_encoder else []),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("created_at", _time, nullable=False, server_default=sa.func.current_timestamp()),
    )


def upgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("uri_hash", sa.String(64)))
    _fill_hashes()
    with op.batch_alter_table("results") as batch:
        batch.alter_column("uri_hash", existing_type=sa.String(64), nullable=False)
        batch.add_column(sa.Column("runtime", sa.Text))
        batch.drop_constraint("uq_results_image", type_="unique")
        batch.create_unique_constraint("uq_results_image", ["uri_hash", "model", "labelset_id"])
    _pending(hashed=True)
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("skipped_by_reason", _json))
        batch.add_column(sa.Column("error", sa.Text))
        batch.add_column(sa.Column("file_roots", _json))
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("run_id", sa.String(32)))
        batch.add_column(sa.Column("images", sa.Integer))
        batch.add_column(sa.Column("finished_at", _time))
        batch.create_index("ix_deliveries_open", ["finished_at", "run_id"])
    op.execute("UPDATE deliveries SET finished_at = updated_at")  # nothing is in flight
    _text_embeddings(with_encoder=True)


def downgrade() -> None:
    _text_embeddings(with_encoder=False)
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_index("ix_deliveries_open")
        for column in ("finished_at", "images", "run_id"):
            batch.drop_column(column)
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("file_roots")
        batch.drop_column("error")
        batch.drop_column("skipped_by_reason")
    _pending(hashed=False)
    with op.batch_alter_table("results") as batch:
        batch.drop_constraint("uq_results_image", type_="unique")
        batch.create_unique_constraint("uq_results_image", ["uri", "model", "labelset_id"])
        batch.drop_column("runtime")
        batch.drop_column("uri_hash")
