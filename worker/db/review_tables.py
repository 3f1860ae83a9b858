"""The workbench's tables: reviewers' corrections, per-label thresholds, learned label set
versions (migration 0011); on the results schema's metadata (worker/db/schema.py)."""

from __future__ import annotations

import sqlalchemy as sa

from worker.db.tables import _BigId, _Json, _Time, metadata, now

# A reviewer's verdict on one label of one image (by content: copies share it), under the
# zero-shot label set its learned versions adapt; one verdict per label, the latest wins.
corrections = sa.Table(
    "corrections", metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("content_sha256", sa.String(64), nullable=False),
    sa.Column("uri", sa.Text, nullable=False),  # where the reviewer saw it (redacted)
    sa.Column("labelset_id", sa.String(16), nullable=False),
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("verdict", sa.String(8), nullable=False),
    sa.Column("reviewer", sa.Text, nullable=False),
    sa.Column("created_at", _Time, nullable=False, server_default=now),
    sa.UniqueConstraint("labelset_id", "content_sha256", "label", name="uq_corrections_label"),
    sa.CheckConstraint("verdict IN ('right', 'wrong')", name="ck_corrections_verdict"),
    sa.Index("ix_corrections_time", "labelset_id", "created_at", "id"),
)

# Below its threshold a label is shown and exported as unsure; per label set version.
thresholds = sa.Table(
    "thresholds", metadata,
    sa.Column("labelset_id", sa.String(16), primary_key=True),
    sa.Column("label", sa.Text, primary_key=True),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("precision", sa.Float),  # the precision it was proposed for; None: set by hand
    sa.Column("set_by", sa.Text, nullable=False),
    sa.Column("set_at", _Time, nullable=False, server_default=now),
)

# A label set version learned from corrections: its label vectors replace the text tower's.
learned = sa.Table(
    "learned", metadata,
    sa.Column("labelset_id", sa.String(16), primary_key=True),
    sa.Column("root_id", sa.String(16), nullable=False),  # the zero-shot label set it adapts
    sa.Column("parent_id", sa.String(16), nullable=False),  # the version it follows
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("method", sa.String(16), nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("scale", sa.Float, nullable=False),  # logits = scale * image @ vectors.T
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("report", _Json, nullable=False),  # cross-validation, corrections used
    sa.Column("run_id", sa.String(32)),  # the relabel run that scored it
    sa.Column("changes", _Json),  # images that changed label, per (old, new), once counted
    sa.Column("created_at", _Time, nullable=False, server_default=now),
    sa.Index("ix_learned_root", "root_id", "created_at"),
)
