"""Results, runs, label sets, pending marks, delivery counts and cached text embeddings.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_time = sa.DateTime(timezone=True)
_now = sa.func.current_timestamp()


def upgrade() -> None:
    op.create_table(
        "labelsets",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("body", _json, nullable=False),
        sa.Column("created_at", _time, nullable=False, server_default=_now),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("labelset_id", sa.String(16), nullable=False),
        sa.Column("started_at", _time, nullable=False, server_default=_now),
        sa.Column("finished_at", _time),
        sa.Column("listed", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("enqueued", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("skipped", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_table(
        "results",
        sa.Column("id", _big_id, primary_key=True, autoincrement=True),
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("labelset_id", sa.String(16), nullable=False),
        sa.Column("item_key", sa.Text),
        sa.Column("source_version", sa.Text),
        sa.Column("content_sha256", sa.String(64)),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("reason", sa.String(32)),
        sa.Column("error", sa.Text),
        sa.Column("labels", _json, nullable=False),
        sa.Column("top_label", sa.Text),
        sa.Column("top_score", sa.Float),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
        sa.Column("run_id", sa.String(32)),
        sa.Column("created_at", _time, nullable=False, server_default=_now),
        sa.Column("updated_at", _time, nullable=False, server_default=_now),
        sa.UniqueConstraint("uri", "model", "labelset_id", name="uq_results_image"),
        sa.CheckConstraint("status IN ('done', 'failed')", name="ck_results_status"),
    )
    op.create_index("ix_results_top_label", "results", ["top_label", "top_score"])
    op.create_index("ix_results_content_sha256", "results", ["content_sha256"])
    op.create_index("ix_results_run_status", "results", ["run_id", "status"])
    op.create_index("ix_results_status_reason", "results", ["status", "reason"])
    op.create_table(
        "pending",
        sa.Column("uri", sa.Text, primary_key=True),
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column("labelset_id", sa.String(16), primary_key=True),
        sa.Column("run_id", sa.String(32)),
        sa.Column("enqueued_at", _time, nullable=False),
    )
    op.create_index("ix_pending_run", "pending", ["run_id"])
    op.create_table(
        "deliveries",
        sa.Column("task_id", sa.String(64), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("updated_at", _time, nullable=False, server_default=_now),
    )
    op.create_table(
        "text_embeddings",
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column("labelset_id", sa.String(16), primary_key=True),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("created_at", _time, nullable=False, server_default=_now),
    )


def downgrade() -> None:
    for table in ("text_embeddings", "deliveries", "pending", "results", "runs", "labelsets"):
        op.drop_table(table)
