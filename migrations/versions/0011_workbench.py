"""The workbench: reviewers' corrections, per-label thresholds, learned label set versions.

Revision ID: 0011
Revises: 0006
Create Date: 2026-12-10

- corrections: a reviewer's verdict (right or wrong) on one label of one image, by content.
- thresholds: per label set version and label, the score under which a label is unsure.
- learned: a label set version whose label vectors were adapted from the corrections.
- ix_results_run_label_score: a run's gallery of one label, least confident first, paged.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0008"
branch_labels = None
depends_on = None

_Time = sa.DateTime(timezone=True)
_Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_now = sa.func.current_timestamp()


def upgrade() -> None:
    op.create_table(
        "corrections",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("labelset_id", sa.String(16), nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("verdict", sa.String(8), nullable=False),
        sa.Column("reviewer", sa.Text, nullable=False),
        sa.Column("created_at", _Time, nullable=False, server_default=_now),
        sa.UniqueConstraint("labelset_id", "content_sha256", "label",
                            name="uq_corrections_label"),
        sa.CheckConstraint("verdict IN ('right', 'wrong')", name="ck_corrections_verdict"),
    )
    op.create_index("ix_corrections_time", "corrections", ["labelset_id", "created_at", "id"])
    op.create_table(
        "thresholds",
        sa.Column("labelset_id", sa.String(16), primary_key=True),
        sa.Column("label", sa.Text, primary_key=True),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("precision", sa.Float),
        sa.Column("set_by", sa.Text, nullable=False),
        sa.Column("set_at", _Time, nullable=False, server_default=_now),
    )
    op.create_table(
        "learned",
        sa.Column("labelset_id", sa.String(16), primary_key=True),
        sa.Column("root_id", sa.String(16), nullable=False),
        sa.Column("parent_id", sa.String(16), nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("scale", sa.Float, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("report", _Json, nullable=False),
        sa.Column("run_id", sa.String(32)),
        sa.Column("changes", _Json),
        sa.Column("created_at", _Time, nullable=False, server_default=_now),
    )
    op.create_index("ix_learned_root", "learned", ["root_id", "created_at"])
    op.create_index("ix_results_run_label_score", "results",
                    ["run_id", "top_label", "top_score", "id"])


def downgrade() -> None:
    op.drop_index("ix_results_run_label_score", "results")
    op.drop_table("learned")
    op.drop_table("thresholds")
    op.drop_table("corrections")
