"""Initial schema: organisations, cases and their parties, evidence, media, intake, history.

Revision ID: 0001
Revises:
Create Date: 2026-05-10

Written by hand and frozen: later model changes get a new revision, never an edit here.
Types are spelled out (not imported from ``state.models``) for the same reason.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _utc(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _case_id(
    table: str, *, nullable: bool = False
) -> list[sa.Column[int] | sa.ForeignKeyConstraint]:
    return [
        sa.Column("case_id", sa.Integer(), nullable=nullable),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name=f"fk_{table}_case_id_cases", ondelete="CASCADE"
        ),
    ]


def upgrade() -> None:
    op.create_table(
        "organisations",
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("phone", sa.String(64), nullable=False),
        sa.Column("districts", sa.JSON(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        _utc("updated_at"),
        sa.PrimaryKeyConstraint("code", name="pk_organisations"),
    )
    op.create_table(
        "case_number_counters",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("last_value", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day", name="pk_case_number_counters"),
    )
    op.create_table(
        "media_blobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("media_id", sa.String(128), nullable=False),
        sa.Column("openid", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("content_type", sa.String(128), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _utc("created_at"),
        _utc("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_media_blobs"),
        sa.UniqueConstraint("media_id", name="uq_media_blobs_media_id"),
    )
    op.create_index("ix_media_blobs_status", "media_blobs", ["status"])
    op.create_table(
        "cases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_no", sa.String(32), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("category", sa.String(32), nullable=False),
        sa.Column("place_text", sa.Text(), nullable=False),
        sa.Column("place_lat", sa.Float(), nullable=True),
        sa.Column("place_lng", sa.Float(), nullable=True),
        sa.Column("facts", sa.Text(), nullable=False),
        sa.Column("claim", sa.Text(), nullable=False),
        sa.Column("amount_yuan", sa.Numeric(14, 2), nullable=True),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("language", sa.String(32), nullable=False),
        sa.Column("needs_interpreter", sa.Boolean(), nullable=False),
        sa.Column("org_code", sa.String(64), nullable=False),
        sa.Column("applicant_openid", sa.String(64), nullable=False),
        sa.Column("accept_deadline", sa.Date(), nullable=False),
        _utc("created_at"),
        _utc("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_cases"),
        sa.UniqueConstraint("case_no", name="uq_cases_case_no"),
        sa.ForeignKeyConstraint(
            ["org_code"], ["organisations.code"], name="fk_cases_org_code_organisations"
        ),
    )
    op.create_index(
        "ix_cases_applicant_openid_created_at", "cases", ["applicant_openid", "created_at"]
    )
    op.create_index("ix_cases_org_code_status", "cases", ["org_code", "status"])
    op.create_index("ix_cases_status_accept_deadline", "cases", ["status", "accept_deadline"])
    op.create_table(
        "parties",
        sa.Column("id", sa.Integer(), nullable=False),
        *_case_id("parties"),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("phone", sa.String(32), nullable=True),
        sa.Column("id_number_ciphertext", sa.Text(), nullable=True),
        sa.Column("id_number_masked", sa.String(32), nullable=True),
        sa.Column("id_number_index", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_parties"),
    )
    op.create_index("ix_parties_case_id", "parties", ["case_id"])
    op.create_index("ix_parties_id_number_index", "parties", ["id_number_index"])
    op.create_table(
        "evidence",
        sa.Column("id", sa.Integer(), nullable=False),
        *_case_id("evidence"),
        sa.Column("media_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("title", sa.String(200), nullable=True),
        _utc("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_evidence"),
        sa.UniqueConstraint("case_id", "media_id", name="uq_evidence_case_id_media_id"),
        sa.ForeignKeyConstraint(
            ["media_id"], ["media_blobs.media_id"], name="fk_evidence_media_id_media_blobs"
        ),
    )
    op.create_index("ix_evidence_media_id", "evidence", ["media_id"])
    op.create_table(
        "intake_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        *_case_id("intake_messages"),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("msg_type", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        _utc("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_intake_messages"),
        sa.UniqueConstraint("case_id", "seq", name="uq_intake_messages_case_id_seq"),
    )
    op.create_table(
        "callback_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("openid", sa.String(64), nullable=False),
        *_case_id("callback_requests", nullable=True),
        sa.Column("step", sa.String(64), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        _utc("created_at"),
        _utc("handled_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_callback_requests"),
    )
    op.create_index("ix_callback_requests_openid", "callback_requests", ["openid"])
    op.create_index(
        "ix_callback_requests_handled_at_created_at",
        "callback_requests",
        ["handled_at", "created_at"],
    )
    op.create_table(
        "case_status_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        *_case_id("case_status_changes"),
        sa.Column("old", sa.String(32), nullable=True),
        sa.Column("new", sa.String(32), nullable=False),
        _utc("at"),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_case_status_changes"),
    )
    op.create_index("ix_case_status_changes_case_id", "case_status_changes", ["case_id"])


def downgrade() -> None:
    for table in (
        "case_status_changes",
        "callback_requests",
        "intake_messages",
        "evidence",
        "parties",
        "cases",
        "media_blobs",
        "case_number_counters",
        "organisations",
    ):
        op.drop_table(table)
