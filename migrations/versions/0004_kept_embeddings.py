"""Kept image embeddings, the models they belong to, and relabel runs' pending ranges.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

- embeddings: one row per (model, content SHA-256), ~1 KB (worker/core/embedding.py).
- embedding_models: the smallint id each model's embeddings are stored under, and their width.
- pending_ranges: a relabel run's ranges of kept embeddings that no worker has answered yet.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "embedding_models",
        sa.Column("id", sa.SmallInteger().with_variant(sa.Integer(), "sqlite"),
                  primary_key=True, autoincrement=True),
        sa.Column("model", sa.Text, nullable=False, unique=True),
        sa.Column("dim", sa.Integer, nullable=False),
    )
    op.create_table(
        "embeddings",
        sa.Column("key", sa.BigInteger, nullable=False),
        sa.Column("model_id", sa.SmallInteger, nullable=False),
        sa.Column("sha256", sa.LargeBinary, nullable=False),
        sa.Column("vector", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("model_id", "key", name="pk_embeddings"),
    )
    op.create_table(
        "pending_ranges",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("lo", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("hi", sa.BigInteger, nullable=False),
        sa.Column("images", sa.BigInteger, nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pending_ranges")
    op.drop_table("embeddings")
    op.drop_table("embedding_models")
