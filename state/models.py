"""The database tables (SQLModel). These classes never leave ``state/``.

Conventions:

- Every timestamp is a timezone-aware UTC ``datetime`` (``UTCDateTime``: SQLite keeps no
  zone, so it is attached again on the way out); naive datetimes are refused on the way in.
- Enumerations (case status, party role, …) are stored as their string values in plain
  ``VARCHAR`` columns, not native enum types, so adding a state later needs no type migration;
  ``state.case_store`` converts them.
- Constraint and index names follow ``NAMING_CONVENTION`` and are written out in the
  migrations: the schema is created by ``state/migrations`` only, never by ``create_all``.
- Money is ``NUMERIC(14, 2)`` (``Decimal``). SQLite keeps it as a double and SQLAlchemy
  rounds it back to 2 places: exact for every amount below 10^13 yuan.
- Children of a case are deleted with it (``ON DELETE CASCADE``): removing a case at the end
  of its retention period (个人信息保护法 Art.47) removes its personal data.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
SQLModel.metadata.naming_convention = NAMING_CONVENTION


class UTCDateTime(sa.TypeDecorator[datetime]):
    """``TIMESTAMP WITH TIME ZONE``; Python values are always aware and in UTC."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime given to a UTC column; pass an aware datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _utc() -> Any:
    return Field(sa_type=UTCDateTime)


def _case_fk() -> Any:
    return Field(foreign_key="cases.id", ondelete="CASCADE")


class Organisation(SQLModel, table=True):
    """A mediation organisation, kept in step with the routing config (``sync_organisations``).

    Rows are never deleted (cases refer to them); one that left the config is ``active=False``.
    """

    __tablename__ = "organisations"

    code: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    kind: str = Field(max_length=32)
    phone: str = Field(max_length=64)
    districts: list[str] = Field(sa_type=sa.JSON, nullable=False)
    active: bool = True
    updated_at: datetime = _utc()


class Case(SQLModel, table=True):
    """One filed dispute. ``case_no`` is unique (the counter allocates it; this is a backstop)."""

    __tablename__ = "cases"
    __table_args__ = (
        sa.Index("ix_cases_applicant_openid_created_at", "applicant_openid", "created_at"),
        sa.Index("ix_cases_org_code_status", "org_code", "status"),
        sa.Index("ix_cases_status_accept_deadline", "status", "accept_deadline"),
        sa.Index("ix_cases_submission_key", "submission_key", unique=True),
    )

    id: int | None = Field(default=None, primary_key=True)
    case_no: str = Field(max_length=32, unique=True)
    #: Identifies the intake that filed this case, so that filing it again (a retry after a
    #: failure that struck once the case was stored) finds this case instead of a second one.
    submission_key: str | None = Field(default=None, max_length=64)
    status: str = Field(max_length=32)
    category: str = Field(max_length=32)
    place_text: str = Field(sa_type=sa.Text)
    place_lat: float | None = None
    place_lng: float | None = None
    facts: str = Field(sa_type=sa.Text)
    claim: str = Field(sa_type=sa.Text)
    amount_yuan: Decimal | None = Field(default=None, sa_type=sa.Numeric(14, 2))
    mode: str = Field(max_length=16)
    language: str = Field(max_length=32)
    needs_interpreter: bool = False
    org_code: str = Field(max_length=64, foreign_key="organisations.code")
    applicant_openid: str = Field(max_length=64)
    accept_deadline: date
    created_at: datetime = _utc()
    updated_at: datetime = _utc()


class Party(SQLModel, table=True):
    """Applicant or respondent of a case. The ID number only encrypted, masked and indexed."""

    __tablename__ = "parties"
    __table_args__ = (
        sa.Index("ix_parties_case_id", "case_id"),
        sa.Index("ix_parties_id_number_index", "id_number_index"),
    )

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = _case_fk()
    role: str = Field(max_length=16)
    name: str = Field(max_length=200)
    phone: str | None = Field(default=None, max_length=32)
    id_number_ciphertext: str | None = Field(default=None, sa_type=sa.Text)
    id_number_masked: str | None = Field(default=None, max_length=32)
    id_number_index: str | None = Field(default=None, max_length=64)


class MediaBlob(SQLModel, table=True):
    """A WeChat media item fetched into our store: ``pending`` → ``stored`` or ``failed``."""

    __tablename__ = "media_blobs"
    __table_args__ = (sa.Index("ix_media_blobs_status", "status"),)

    id: int | None = Field(default=None, primary_key=True)
    media_id: str = Field(max_length=128, unique=True)
    openid: str = Field(max_length=64)
    kind: str = Field(max_length=16)
    status: str = Field(max_length=16)
    path: str | None = Field(default=None, sa_type=sa.Text)
    sha256: str | None = Field(default=None, max_length=64)
    size: int | None = Field(default=None, sa_type=sa.BigInteger)
    content_type: str | None = Field(default=None, max_length=128)
    error: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = _utc()
    updated_at: datetime = _utc()


class Evidence(SQLModel, table=True):
    """A piece of evidence of a case; its bytes are the MediaBlob with the same ``media_id``."""

    __tablename__ = "evidence"
    __table_args__ = (
        sa.UniqueConstraint("case_id", "media_id"),
        sa.Index("ix_evidence_media_id", "media_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = _case_fk()
    media_id: str = Field(max_length=128, foreign_key="media_blobs.media_id")
    kind: str = Field(max_length=16)
    title: str | None = Field(default=None, max_length=200)
    created_at: datetime = _utc()


class IntakeMessage(SQLModel, table=True):
    """One message of the intake conversation, kept as the case's audit trail, in ``seq`` order."""

    __tablename__ = "intake_messages"
    __table_args__ = (sa.UniqueConstraint("case_id", "seq"),)

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = _case_fk()
    seq: int
    direction: str = Field(max_length=8)
    msg_type: str = Field(max_length=16)
    content: str = Field(sa_type=sa.Text)
    created_at: datetime = _utc()


class CallbackRequest(SQLModel, table=True):
    """A resident asked for a person to call back (「人工」); ``handled_at`` once done."""

    __tablename__ = "callback_requests"
    __table_args__ = (
        sa.Index("ix_callback_requests_openid", "openid"),
        sa.Index("ix_callback_requests_handled_at_created_at", "handled_at", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    openid: str = Field(max_length=64)
    case_id: int | None = Field(default=None, foreign_key="cases.id", ondelete="CASCADE")
    step: str | None = Field(default=None, max_length=64)
    note: str = Field(sa_type=sa.Text)
    created_at: datetime = _utc()
    handled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class CaseNumberCounter(SQLModel, table=True):
    """The last case counter handed out on ``day`` (China time); see ``cases.case_number``."""

    __tablename__ = "case_number_counters"

    day: date = Field(primary_key=True)
    last_value: int


class CaseStatusChange(SQLModel, table=True):
    """Append-only history of a case's status; ``old`` is NULL for the filing itself."""

    __tablename__ = "case_status_changes"
    __table_args__ = (sa.Index("ix_case_status_changes_case_id", "case_id"),)

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = _case_fk()
    old: str | None = Field(default=None, max_length=32)
    new: str = Field(max_length=32)
    at: datetime = _utc()
    actor: str = Field(max_length=128)


class MediationRoom(SQLModel, table=True):
    """One video mediation session of a case (``mediation_rooms.room`` holds its rules)."""

    __tablename__ = "mediation_rooms"
    __table_args__ = (
        sa.UniqueConstraint("case_id", "session_no"),
        sa.Index("ix_mediation_rooms_state_scheduled_at", "state", "scheduled_at"),
    )

    id: str = Field(primary_key=True, max_length=32)
    case_id: int = _case_fk()
    #: 1 for the case's first session, 2 for the next, …
    session_no: int
    state: str = Field(max_length=16)
    scheduled_at: datetime = _utc()
    video_codec: str = Field(max_length=16)
    created_at: datetime = _utc()
    updated_at: datetime = _utc()
    live_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class RoomSeat(SQLModel, table=True):
    """A seat of a room and the one person its join link is for.

    ``nonce`` is in the seat's join token; a new link stores a new nonce, revoking the old.
    ``identity_digest`` is a keyed hash of the answer to the identity re-check (``identity_check``
    says which: the last 6 characters of the ID number, or the phone number), never the answer.
    """

    __tablename__ = "room_seats"

    room_id: str = Field(
        primary_key=True, max_length=32, foreign_key="mediation_rooms.id", ondelete="CASCADE"
    )
    seat: str = Field(primary_key=True, max_length=32)
    person_name: str = Field(max_length=200)
    nonce: str = Field(max_length=64)
    identity_check: str | None = Field(default=None, max_length=16)
    identity_digest: str | None = Field(default=None, max_length=64)
    expires_at: datetime = _utc()
