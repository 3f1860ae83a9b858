"""URLs inside parameters lose their secrets too; a relabel range records its scope.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03

- results/pending/images: a URI whose parameter holds a URL with a password or a signature, plain or
  percent-encoded (?redirect=https%3A%2F%2Fu%3Apw%40h%2F...%3Fsig%3D...), was stored with them
  (masked in output and logs only). Such URIs are rewritten to their stored form and hashed
  again (migrations/uris.py), as 0003 did for the others: the secrets leave the database, and
  the image keeps one identity with the URIs workers store from now on.
- pending_ranges.scope_run: the run whose images a relabel range scores (None: every image),
  so that a later `producer relabel` can take over a range whose message was lost.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations.uris import scrub_images, scrub_pending, scrub_results

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pending_ranges") as batch:
        batch.add_column(sa.Column("scope_run", sa.String(32)))
    bind = op.get_bind()
    scrub_results(bind, model="model_id")  # results are one per weights since 0007
    scrub_pending(bind)
    scrub_images(bind)


def downgrade() -> None:
    # The secrets removed are gone: the stored URIs stay as they are.
    with op.batch_alter_table("pending_ranges") as batch:
        batch.drop_column("scope_run")
