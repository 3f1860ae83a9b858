"""The results database's tables, on one metadata (the workbench's are in review_tables.py)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData()
now = sa.func.current_timestamp()
_Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Time = sa.DateTime(timezone=True)
_Hash = sa.String(64)  # sha256 hex: URIs are indexed by their hash, never by their text

labelsets = sa.Table(
    "labelsets", metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("body", _Json, nullable=False),
    sa.Column("created_at", _Time, nullable=False, server_default=now),
)

runs = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("labelset_id", sa.String(16), nullable=False),
    sa.Column("started_at", _Time, nullable=False, server_default=now),
    sa.Column("finished_at", _Time),
    sa.Column("listed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("enqueued", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("skipped", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("skipped_by_reason", _Json),
    sa.Column("error", sa.Text),  # why the listing stopped early (failed, cancelled)
    sa.Column("file_roots", _Json),  # folders (and linked files) this run's chunks may read
    sa.Column("cancelled_at", _Time),  # withdrawn: its chunks are no longer to be tagged
)

FAILED = sa.text("status = 'failed'")
results = sa.Table(
    "results", metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("uri", sa.Text, nullable=False),  # without userinfo or signature (redact.py)
    sa.Column("uri_hash", _Hash, nullable=False),
    # The URI as received carried credentials or a signature: `uri` alone cannot fetch it.
    sa.Column("signed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("model", sa.Text, nullable=False),  # the TAGGER_MODEL it was served as: a name
    sa.Column("model_id", sa.SmallInteger, nullable=False),  # the weights: models.id
    sa.Column("labelset_id", sa.String(16), nullable=False),
    sa.Column("item_key", sa.Text),
    sa.Column("source_version", sa.Text),
    sa.Column("content_sha256", sa.String(64)),
    sa.Column("status", sa.String(8), nullable=False),
    sa.Column("reason", sa.String(32)),
    sa.Column("error", sa.Text),
    sa.Column("labels", _Json, nullable=False),
    sa.Column("top_label", sa.Text),
    sa.Column("top_score", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
    sa.Column("run_id", sa.String(32)),
    sa.Column("runtime", sa.Text),  # which backend and precision computed the labels
    sa.Column("created_at", _Time, nullable=False, server_default=now),
    sa.Column("updated_at", _Time, nullable=False, server_default=now),
    sa.UniqueConstraint("uri_hash", "model_id", "labelset_id", name="uq_results_image"),
    sa.CheckConstraint("status IN ('done', 'failed')", name="ck_results_status"),
    # Copies of failing content were once stored done without labels and then skipped for ever.
    sa.CheckConstraint("status = 'failed' OR top_label IS NOT NULL",
                       name="ck_results_done_has_labels"),
    # Every index here is paid by every row written (a relabel writes 20,000 a second): content
    # is found through images, and only failures are looked up by reason.
    sa.Index("ix_results_top_label", "top_label", "top_score"),
    sa.Index("ix_results_run_status", "run_id", "status"),
    sa.Index("ix_results_failed_reason", "reason", postgresql_where=FAILED, sqlite_where=FAILED),
    # A run's gallery of one label, least confident first, a page at a time (the workbench).
    sa.Index("ix_results_run_label_score", "run_id", "top_label", "top_score", "id"),
)

# An image enqueued and not yet answered; its row blocks a second enqueue of the same image.
pending = sa.Table(
    "pending", metadata,
    sa.Column("uri_hash", _Hash, primary_key=True),
    sa.Column("model", sa.Text, primary_key=True),
    sa.Column("labelset_id", sa.String(16), primary_key=True),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("run_id", sa.String(32)),
    sa.Column("enqueued_at", _Time, nullable=False),
    sa.Index("ix_pending_run", "run_id"),
)

# Each start of a chunk message: a poison chunk is parked after K; open rows are in flight.
deliveries = sa.Table(
    "deliveries", metadata,
    sa.Column("task_id", sa.String(64), primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),  # starts
    sa.Column("retries", sa.Integer, nullable=False, server_default="0"),  # granted by workers
    sa.Column("run_id", sa.String(32)),
    sa.Column("images", sa.Integer),
    sa.Column("updated_at", _Time, nullable=False, server_default=now),
    sa.Column("finished_at", _Time),
    sa.Index("ix_deliveries_open", "finished_at", "run_id"),
)

# A relabel run's range of kept embeddings not answered yet: its images count as pending.
pending_ranges = sa.Table(
    "pending_ranges", metadata,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("lo", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hi", sa.BigInteger, nullable=False),
    sa.Column("images", sa.BigInteger, nullable=False),
    sa.Column("enqueued_at", _Time, nullable=False),
    sa.Column("scope_run", sa.String(32)),  # only this run's images (None: every image)
)

# A model is its weights: the digest of its checkpoint's files (worker/backends/weights.py),
# under a smallint id that results, kept embeddings and text embeddings are keyed by.
models = sa.Table(
    "models", metadata,
    sa.Column("id", sa.SmallInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
              autoincrement=True),
    # The digest (64 hex digits; tests without a checkpoint use the model's name). None: a model
    # named before weights were identified (migration 0007), not used to score until a worker
    # shows that its weights are the ones that computed it (db/models.py).
    sa.Column("weights", sa.Text, unique=True),
    sa.Column("name", sa.Text, nullable=False),  # the TAGGER_MODEL it was last served as
    sa.Column("dim", sa.Integer),  # its image embeddings' width, once one is kept
    sa.Column("since", _Time, nullable=False, server_default=now),  # its first result
    sa.Column("seen_at", _Time, nullable=False, server_default=now),  # a worker's last start
)

# Each image (URI) at the content its own latest fetch found: what relabel and kept embeddings
# may believe about it, one row per image whatever the number of label sets and models.
images = sa.Table(
    "images", metadata,
    sa.Column("uri_hash", _Hash, primary_key=True),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("signed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("item_key", sa.Text),
    sa.Column("source_version", sa.Text),
    sa.Column("content_key", sa.BigInteger, nullable=False),  # embedding.key_of(content)
    sa.Column("content", sa.LargeBinary, nullable=False),  # SHA-256, 32 bytes
    sa.Column("updated_at", _Time, nullable=False, server_default=now),
    sa.Index("ix_images_content", "content_key"),
)

# Kept image embeddings (worker/core/embedding.py has their form), ~1 KB per image: the model
# is a smallint, the indexed key an int8, columns ordered so that no byte is padding.
embeddings = sa.Table(
    "embeddings", metadata,
    sa.Column("key", sa.BigInteger, nullable=False),
    sa.Column("model_id", sa.SmallInteger, nullable=False),
    sa.Column("sha256", sa.LargeBinary, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),
    sa.PrimaryKeyConstraint("model_id", "key", name="pk_embeddings"),
)

text_embeddings = sa.Table(
    "text_embeddings", metadata,
    sa.Column("model_id", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("labelset_id", sa.String(16), primary_key=True),
    sa.Column("encoder", sa.String(64), primary_key=True),  # what computed them
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("created_at", _Time, nullable=False, server_default=now),
)
