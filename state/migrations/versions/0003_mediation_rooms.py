"""Video mediation rooms of a case and their seats (issue 3).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

Written by hand and frozen, like 0001.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _utc(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "mediation_rooms",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("session_no", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        _utc("scheduled_at"),
        sa.Column("video_codec", sa.String(16), nullable=False),
        _utc("created_at"),
        _utc("updated_at"),
        _utc("live_at", nullable=True),
        _utc("ended_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_mediation_rooms"),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name="fk_mediation_rooms_case_id_cases", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("case_id", "session_no", name="uq_mediation_rooms_case_id_session_no"),
    )
    op.create_index(
        "ix_mediation_rooms_state_scheduled_at", "mediation_rooms", ["state", "scheduled_at"]
    )
    op.create_table(
        "room_seats",
        sa.Column("room_id", sa.String(32), nullable=False),
        sa.Column("seat", sa.String(32), nullable=False),
        sa.Column("person_name", sa.String(200), nullable=False),
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("identity_check", sa.String(16), nullable=True),
        sa.Column("identity_digest", sa.String(64), nullable=True),
        _utc("expires_at"),
        sa.PrimaryKeyConstraint("room_id", "seat", name="pk_room_seats"),
        sa.ForeignKeyConstraint(
            ["room_id"],
            ["mediation_rooms.id"],
            name="fk_room_seats_room_id_mediation_rooms",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("room_seats")
    op.drop_index("ix_mediation_rooms_state_scheduled_at", table_name="mediation_rooms")
    op.drop_table("mediation_rooms")
