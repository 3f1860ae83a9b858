"""URIs are stored without userinfo and signatures, and identified by what is left.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

- results.signed: the URI as received carried credentials or a signature (not stored), so the
  stored URI alone cannot fetch it (`retry-failed` leaves such images to the next listing).
- results/pending: URIs with a password, a token or a signature are rewritten to their stored
  form (worker/core/redact.py: stored_uri) and re-hashed. Rows that then name one image keep
  one: a done result over a failed one, then the latest.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations.uris import scrub_pending, scrub_results

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("signed", sa.Boolean, nullable=False,
                                   server_default=sa.false()))
    bind = op.get_bind()
    scrub_results(bind)
    scrub_pending(bind)


def downgrade() -> None:
    # The secrets removed are gone: the stored URIs stay as they are.
    with op.batch_alter_table("results") as batch:
        batch.drop_column("signed")
