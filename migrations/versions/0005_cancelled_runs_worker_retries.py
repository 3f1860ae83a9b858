"""Runs that were withdrawn, and the retries a worker granted a chunk.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

- runs.cancelled_at: `producer tag` withdrew the run's unstarted chunks (it failed or was
  interrupted); a worker that still meets one of them does not tag it.
- deliveries.retries: the retries the workers themselves scheduled for a chunk message. The
  poison-chunk guard counts deaths as starts minus these, never from the message's own header.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("cancelled_at", sa.DateTime(timezone=True)))
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("retries", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("retries")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("cancelled_at")
