"""Cases remember the intake that filed them (``submission_key``), so a retry files no twin.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

Written by hand and frozen, like 0001.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("cases", sa.Column("submission_key", sa.String(64), nullable=True))
    op.create_index("ix_cases_submission_key", "cases", ["submission_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_cases_submission_key", table_name="cases")
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("submission_key")
