"""A done result always has labels.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

Earlier releases could store copies of failing content as `done` with no labels, and every later
run skipped them as done. Such rows become failures (reason internal-error), which
`producer retry-failed` sends again; then a check constraint keeps any writer from storing one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

NAME = "ck_results_done_has_labels"


def upgrade() -> None:
    op.execute(sa.text(
        "UPDATE results SET status = 'failed', reason = 'internal-error', error = "
        "'stored as done without labels by an earlier release; retry with producer "
        "retry-failed --reason internal-error' WHERE status = 'done' AND top_label IS NULL"))
    with op.batch_alter_table("results") as batch:
        batch.create_check_constraint(NAME, "status = 'failed' OR top_label IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.drop_constraint(NAME, type_="check")
