"""Reading and writing cases and what hangs off them: async functions over an AsyncEngine.

Contract of every function here, and of the other stores (``state.media_store``,
``state.callback_store``, ``state.organisation_store``):

- It takes the application's ``AsyncEngine`` (``state.db.create_engine``) and runs as **one
  short transaction** of its own (``engine.begin()``): all of it is stored, or none of it.
  (``create_case`` takes more only to repair what a filing found missing: the organisation's
  row, or a counter behind the stored cases.)
- A database that cannot be reached raises ``StorageUnavailable`` (``state.db.storage_errors``);
  since nothing was committed, the caller can tell the resident to retry and lose nothing.
- It takes and returns plain frozen dataclasses and ``cases`` enums, never table objects.
- Times are passed in (``now``), timezone-aware.

Case numbers (``cases.case_number``) come from one counter row per China day, bumped with
``INSERT … ON CONFLICT (day) DO UPDATE SET last_value = last_value + 1 RETURNING last_value``
inside the transaction that inserts the case: the row lock serialises concurrent filings
(across processes too), and a rolled-back filing gives its number back, so a day's numbers are
consecutive. The unique constraint on ``case_no`` is the backstop.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
import sqlalchemy.exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cases.case_number import CaseNumber, china_day
from cases.draft import CaseDraft, Category, EvidenceKind
from cases.id_number import mask_id_number, normalise_id_number
from cases.routing import Organisation
from cases.status import INITIAL_STATUS, CaseStatus, check_transition
from state._sql import insert_for, table_of, upsert
from state.db import storage_errors
from state.media_store import pending_media_row
from state.models import (
    Case,
    CaseNumberCounter,
    CaseStatusChange,
    Evidence,
    IntakeMessage,
    MediaBlob,
    Party,
)
from state.models import Organisation as OrganisationRow
from state.organisation_store import organisation_row
from state.personal_data import ID_NUMBER_PURPOSE, PersonalDataProtector, redact_id_numbers

log = logging.getLogger(__name__)

APPLICANT = "applicant"
RESPONDENT = "respondent"
FACTS_VOICE_TITLE = "事实陈述（语音）"


@dataclass(frozen=True, slots=True)
class IntakeLine:
    """One message of the intake conversation: ``direction`` is ``"in"`` (resident) or ``"out"``."""

    direction: str
    msg_type: str
    content: str
    at: datetime

    def __post_init__(self) -> None:
        if self.direction not in ("in", "out"):
            raise ValueError(f"direction must be 'in' or 'out', got {self.direction!r}")


@dataclass(frozen=True, slots=True)
class CreatedCase:
    """What the resident is told once the case is stored."""

    case_no: str
    org_name: str
    org_phone: str
    accept_deadline: date
    status: CaseStatus


@dataclass(frozen=True, slots=True)
class CaseListing:
    """One line of 「查询」: newest first."""

    case_no: str
    category: Category
    status: CaseStatus
    created_at: datetime


@dataclass(frozen=True, slots=True)
class PartyRecord:
    """A party as staff may see it: the ID number only masked."""

    role: str
    name: str
    phone: str | None
    id_number_masked: str | None


@dataclass(frozen=True, slots=True)
class EvidenceRecord:
    media_id: str
    kind: EvidenceKind
    title: str | None
    media_status: str


@dataclass(frozen=True, slots=True)
class CaseRecord:
    """A stored case with its parties, evidence, intake conversation and status history."""

    case_no: str
    status: CaseStatus
    category: Category
    org_code: str
    applicant_openid: str
    place_text: str
    place_lat: float | None
    place_lng: float | None
    facts: str
    claim: str
    amount_yuan: Decimal | None
    mode: str
    language: str
    needs_interpreter: bool
    accept_deadline: date
    created_at: datetime
    updated_at: datetime
    parties: tuple[PartyRecord, ...]
    evidence: tuple[EvidenceRecord, ...]
    intake: tuple[IntakeLine, ...]
    history: tuple[tuple[CaseStatus | None, CaseStatus, str], ...]


_CASES = table_of(Case)
_PARTIES = table_of(Party)
_EVIDENCE = table_of(Evidence)
_MEDIA = table_of(MediaBlob)
_INTAKE = table_of(IntakeMessage)
_COUNTERS = table_of(CaseNumberCounter)
_CHANGES = table_of(CaseStatusChange)
_ORGS = table_of(OrganisationRow)


@dataclass(frozen=True, slots=True)
class _FilingStatements:
    """The statements of a filing, built once per backend and executed with parameters.

    Building a statement (``insert(...).values(...).on_conflict...``) and deriving its cache
    key cost about as much CPU as executing it; filing a case ran eight of them, which made it
    the largest single cost of an intake message. Built once, SQLAlchemy's compiled cache
    finds them at once.
    """

    ensure_organisation: Any
    insert_case: Any
    insert_changes: Any
    insert_parties: Any
    ensure_media: Any
    insert_evidence: Any
    insert_intake: Any
    #: Bumps the day's counter and writes the case's number, returning it: one statement on
    #: PostgreSQL (a data-modifying CTE), so the counter row's lock, which serialises the day's
    #: filings, is held for that statement and the commit only. ``None`` on SQLite (no
    #: data-modifying CTEs; its one writer at a time makes the extra statement harmless).
    number_case: Any | None
    next_counter: Any
    set_case_no: Any


@functools.cache
def _filing_statements(backend: str) -> _FilingStatements:
    insert = insert_for(backend)
    next_counter = (
        insert(_COUNTERS)
        .values(day=sa.bindparam("counter_day"), last_value=1)
        .on_conflict_do_update(
            index_elements=[_COUNTERS.c.day], set_={"last_value": _COUNTERS.c.last_value + 1}
        )
        .returning(_COUNTERS.c.last_value)
    )
    number_case = None
    if backend == "postgresql":
        counter = next_counter.cte("counter")
        digits = sa.cast(counter.c.last_value, sa.Text)
        # CaseNumber's "{counter:04d}": at least four digits, more when the day needs them.
        padded = sa.func.lpad(digits, sa.func.greatest(4, sa.func.length(digits)), "0")
        number = sa.select(sa.bindparam("day_prefix", type_=sa.Text) + padded).scalar_subquery()
        number_case = (
            sa.update(_CASES)
            .where(_CASES.c.id == sa.bindparam("case_row"))
            .values(case_no=number)
            .returning(_CASES.c.case_no)
        )
    return _FilingStatements(
        # Organisations are synced at start-up; this repairs the foreign key when a filing finds
        # its organisation missing (a database restored or emptied since), see create_case.
        ensure_organisation=insert(_ORGS).on_conflict_do_nothing(index_elements=[_ORGS.c.code]),
        insert_case=sa.insert(_CASES).returning(_CASES.c.id),
        insert_changes=sa.insert(_CHANGES),
        insert_parties=sa.insert(_PARTIES),
        ensure_media=insert(_MEDIA).on_conflict_do_nothing(index_elements=[_MEDIA.c.media_id]),
        insert_evidence=sa.insert(_EVIDENCE),
        insert_intake=sa.insert(_INTAKE),
        number_case=number_case,
        next_counter=next_counter,
        set_case_no=sa.update(_CASES)
        .where(_CASES.c.id == sa.bindparam("case_row"))
        .values(case_no=sa.bindparam("new_case_no")),
    )


def _day_prefix(day: date) -> str:
    """What every case number of ``day`` starts with (``JF20261121-``)."""
    return str(CaseNumber(day, 1)).rsplit("-", 1)[0] + "-"


async def _repair_counter(connection: AsyncConnection, day: date) -> None:
    prefix = _day_prefix(day)
    numbers = await connection.execute(
        sa.select(_CASES.c.case_no).where(_CASES.c.case_no.startswith(prefix, autoescape=True))
    )
    highest = max((CaseNumber.parse(number).counter for number in numbers.scalars()), default=0)
    await connection.execute(
        upsert(connection, _COUNTERS)
        .values(day=day, last_value=highest)
        .on_conflict_do_update(
            index_elements=[_COUNTERS.c.day],
            set_={"last_value": highest},
            where=_COUNTERS.c.last_value < highest,
        )
    )


async def create_case(
    db: AsyncEngine,
    draft: CaseDraft,
    *,
    applicant_openid: str,
    organisation: Organisation,
    accept_deadline: date,
    intake: Sequence[IntakeLine],
    protector: PersonalDataProtector,
    now: datetime,
    submission_key: str | None = None,
) -> CreatedCase:
    """Store ``draft`` as a new case routed to ``organisation``, numbered for ``now``'s China day.

    ``submission_key`` names the intake being filed: if a case was already stored under it (a
    retry after a failure that struck once the case was stored), that case is returned and
    nothing new is stored.

    One transaction: the number, the case (status ``AWAITING_ACCEPTANCE``, with its two
    history rows), both parties (the applicant's ID encrypted, masked and blind-indexed),
    evidence (each with a pending media row the background fetcher completes) and the intake
    conversation; ID numbers typed into free text are masked. Raises StorageUnavailable when
    the database cannot be reached; nothing is stored then.
    """
    filing = _Filing(
        draft, applicant_openid, organisation, accept_deadline, intake, now, submission_key
    )
    day = china_day(now)
    repaired: set[str] = set()
    with storage_errors("store the new case"):
        while True:
            try:
                async with db.begin() as connection:
                    case_no = await _insert_case(connection, filing, protector)
                break
            except sqlalchemy.exc.IntegrityError as error:
                # A repeat is found by the unique index on submission_key (no look-up before
                # every filing: repeats are rare, and the index decides even between racing
                # retries). The other two cases are repaired once each, then tried again.
                reason = str(error.orig)
                if submission_key is not None and "submission_key" in reason:
                    earlier = await _filed_under(db, submission_key)
                    if earlier is not None:
                        log.warning(
                            "intake already filed as %s; not filing it again", earlier.case_no
                        )
                        return earlier
                repair = _repair_for(reason)
                if repair is None or repair in repaired:
                    raise
                repaired.add(repair)
                async with db.begin() as connection:
                    if repair == "organisation":
                        log.warning("organisation %s missing; adding it", organisation.code)
                        statements = _filing_statements(connection.dialect.name)
                        await connection.execute(
                            statements.ensure_organisation, organisation_row(organisation, now)
                        )
                    else:
                        log.error("case number collision on %s; repairing the counter", day)
                        await _repair_counter(connection, day)
    log.info("case %s stored, routed to %s", case_no, organisation.code)
    return CreatedCase(
        case_no, organisation.name, organisation.phone, accept_deadline, INITIAL_STATUS
    )


def _repair_for(reason: str) -> str | None:
    """What a filing refused with ``reason`` needs before it is tried again, if anything.

    - ``"organisation"``: a foreign key failed. The only one a filing can miss is the case's
      organisation (its evidence's media rows are inserted with it): organisations are synced
      at start-up, not on every filing, so a database restored or emptied since lacks the row.
      (SQLite does not say which key failed; PostgreSQL does, and it is always this one.)
    - ``"counter"``: the case number is taken: the day's counter is behind the cases (restored
      from an old backup, edited by hand) and is moved past the highest number in use.
    """
    if "foreign key" in reason.lower():
        return "organisation"
    if "case_no" in reason:
        return "counter"
    return None


async def _filed_under(db: AsyncEngine, submission_key: str) -> CreatedCase | None:
    query = (
        sa.select(
            _CASES.c.case_no,
            _CASES.c.accept_deadline,
            _CASES.c.status,
            _ORGS.c.name,
            _ORGS.c.phone,
        )
        .join(_ORGS, _ORGS.c.code == _CASES.c.org_code)
        .where(_CASES.c.submission_key == submission_key)
    )
    async with db.connect() as connection:
        row = (await connection.execute(query)).first()
    if row is None:
        return None
    return CreatedCase(
        row.case_no, row.name, row.phone, row.accept_deadline, CaseStatus(row.status)
    )


@dataclass(frozen=True, slots=True)
class _Filing:
    draft: CaseDraft
    openid: str
    organisation: Organisation
    accept_deadline: date
    intake: Sequence[IntakeLine]
    now: datetime
    submission_key: str | None


async def _insert_case(
    connection: AsyncConnection, filing: _Filing, protector: PersonalDataProtector
) -> str:
    draft, now, org = filing.draft, filing.now, filing.organisation
    # The case goes in under a placeholder number; the real one is allocated as the last
    # statement, so that the counter row's lock (which serialises every filing of the day) is
    # held for that statement and the commit (two statements on SQLite), not the whole filing.
    placeholder = "pending-" + secrets.token_hex(12)
    statements = _filing_statements(connection.dialect.name)
    values = {
        "case_no": placeholder,
        "submission_key": filing.submission_key,
        "status": INITIAL_STATUS.value,
        "category": draft.category.value,
        "place_text": draft.place.text,
        "place_lat": draft.place.latitude,
        "place_lng": draft.place.longitude,
        "facts": redact_id_numbers(draft.facts),
        "claim": redact_id_numbers(draft.claim),
        "amount_yuan": draft.amount_yuan,
        "mode": draft.mode.value,
        "language": draft.language.language,
        "needs_interpreter": draft.language.needs_interpreter,
        "org_code": org.code,
        "applicant_openid": filing.openid,
        "accept_deadline": filing.accept_deadline,
        "created_at": now,
        "updated_at": now,
    }
    case_id: int = (await connection.execute(statements.insert_case, values)).scalar_one()
    changes = [
        (None, CaseStatus.SUBMITTED, f"applicant:{filing.openid}"),
        (CaseStatus.SUBMITTED, INITIAL_STATUS, f"routing:{org.code}"),
    ]
    await connection.execute(
        statements.insert_changes,
        [_change_row(case_id, old, new, actor, now) for old, new, actor in changes],
    )
    id_number = normalise_id_number(draft.applicant_id_number)
    applicant = {
        "id_number_ciphertext": protector.encrypt(id_number, purpose=ID_NUMBER_PURPOSE),
        "id_number_masked": mask_id_number(id_number),
        "id_number_index": protector.blind_index(id_number, purpose=ID_NUMBER_PURPOSE),
    }
    respondent = dict.fromkeys(applicant)
    await connection.execute(
        statements.insert_parties,
        [
            _party_row(case_id, APPLICANT, draft.applicant_name, draft.applicant_phone, applicant),
            _party_row(
                case_id, RESPONDENT, draft.respondent_name, draft.respondent_phone, respondent
            ),
        ],
    )
    evidence = [(item.media_id, item.kind, item.title) for item in draft.evidence]
    voice = draft.facts_voice_media_id
    if voice and all(media_id != voice for media_id, _, _ in evidence):
        evidence.append((voice, EvidenceKind.VOICE, FACTS_VOICE_TITLE))
    if evidence:
        pending = [pending_media_row(m, filing.openid, kind.value, now) for m, kind, _ in evidence]
        await connection.execute(statements.ensure_media, pending)
        rows = [
            {"case_id": case_id, "media_id": m, "kind": k.value, "title": t, "created_at": now}
            for m, k, t in evidence
        ]
        await connection.execute(statements.insert_evidence, rows)
    if filing.intake:
        await connection.execute(
            statements.insert_intake,
            [_intake_row(case_id, seq, line) for seq, line in enumerate(filing.intake, start=1)],
        )
    day = china_day(now)
    if statements.number_case is not None:
        numbered = await connection.execute(
            statements.number_case,
            {"counter_day": day, "case_row": case_id, "day_prefix": _day_prefix(day)},
        )
        # Parsed back so that SQL's formatting can never drift from CaseNumber's unnoticed.
        return str(CaseNumber.parse(numbered.scalar_one()))
    counter = await connection.execute(statements.next_counter, {"counter_day": day})
    case_no = str(CaseNumber(day, counter.scalar_one()))
    await connection.execute(statements.set_case_no, {"case_row": case_id, "new_case_no": case_no})
    return case_no


def _change_row(
    case_id: int, old: CaseStatus | None, new: CaseStatus, actor: str, at: datetime
) -> dict[str, Any]:
    old_value = old.value if old else None
    return {"case_id": case_id, "old": old_value, "new": new.value, "at": at, "actor": actor}


def _party_row(
    case_id: int, role: str, name: str, phone: str | None, id_number: Mapping[str, str | None]
) -> dict[str, Any]:
    return {"case_id": case_id, "role": role, "name": name, "phone": phone, **id_number}


def _intake_row(case_id: int, seq: int, line: IntakeLine) -> dict[str, Any]:
    return {
        "case_id": case_id,
        "seq": seq,
        "direction": line.direction,
        "msg_type": line.msg_type,
        "content": redact_id_numbers(line.content),
        "created_at": line.at,
    }


async def list_cases_for_openid(db: AsyncEngine, openid: str, limit: int = 10) -> list[CaseListing]:
    """The resident's ``limit`` most recent cases, newest first."""
    with storage_errors("list the resident's cases"):
        async with db.begin() as connection:
            rows = (
                await connection.execute(
                    sa.select(*_CASES.c["case_no", "category", "status", "created_at"])
                    .where(_CASES.c.applicant_openid == openid)
                    .order_by(_CASES.c.created_at.desc(), _CASES.c.id.desc())
                    .limit(limit)
                )
            ).all()
    return [
        CaseListing(case_no, Category(category), CaseStatus(status), created_at)
        for case_no, category, status, created_at in rows
    ]


async def get_case(db: AsyncEngine, case_no: str) -> CaseRecord | None:
    """The case numbered ``case_no`` with everything attached, or None. ID numbers masked only."""
    with storage_errors("read the case"):
        async with db.begin() as connection:
            case = (
                (await connection.execute(sa.select(_CASES).where(_CASES.c.case_no == case_no)))
                .mappings()
                .one_or_none()
            )
            if case is None:
                return None
            case_id = case["id"]
            parties = (
                await connection.execute(
                    sa.select(_PARTIES).where(_PARTIES.c.case_id == case_id).order_by(_PARTIES.c.id)
                )
            ).mappings()
            party_records = tuple(
                PartyRecord(p["role"], p["name"], p["phone"], p["id_number_masked"])
                for p in parties
            )
            evidence = (
                await connection.execute(
                    sa.select(
                        _EVIDENCE.c.media_id, _EVIDENCE.c.kind, _EVIDENCE.c.title, _MEDIA.c.status
                    )
                    .join(_MEDIA, _MEDIA.c.media_id == _EVIDENCE.c.media_id)
                    .where(_EVIDENCE.c.case_id == case_id)
                    .order_by(_EVIDENCE.c.id)
                )
            ).all()
            intake = (
                await connection.execute(
                    sa.select(_INTAKE).where(_INTAKE.c.case_id == case_id).order_by(_INTAKE.c.seq)
                )
            ).mappings()
            intake_lines = tuple(
                IntakeLine(i["direction"], i["msg_type"], i["content"], i["created_at"])
                for i in intake
            )
            history = (
                await connection.execute(
                    sa.select(_CHANGES.c.old, _CHANGES.c.new, _CHANGES.c.actor)
                    .where(_CHANGES.c.case_id == case_id)
                    .order_by(_CHANGES.c.id)
                )
            ).all()
    return CaseRecord(
        case_no=case["case_no"],
        status=CaseStatus(case["status"]),
        category=Category(case["category"]),
        org_code=case["org_code"],
        applicant_openid=case["applicant_openid"],
        place_text=case["place_text"],
        place_lat=case["place_lat"],
        place_lng=case["place_lng"],
        facts=case["facts"],
        claim=case["claim"],
        amount_yuan=case["amount_yuan"],
        mode=case["mode"],
        language=case["language"],
        needs_interpreter=case["needs_interpreter"],
        accept_deadline=case["accept_deadline"],
        created_at=case["created_at"],
        updated_at=case["updated_at"],
        parties=party_records,
        evidence=tuple(
            EvidenceRecord(media_id, EvidenceKind(kind), title, status)
            for media_id, kind, title, status in evidence
        ),
        intake=intake_lines,
        history=tuple(
            (CaseStatus(old) if old else None, CaseStatus(new), actor)
            for old, new, actor in history
        ),
    )


async def set_case_status(
    db: AsyncEngine, case_no: str, new: CaseStatus, *, actor: str, now: datetime
) -> CaseStatus:
    """The one place a stored case changes status: checked, recorded in the history, logged.

    Returns the old status. Raises LookupError for an unknown case, InvalidTransition when the
    rules of ``cases.status`` forbid the move (nothing changes then).
    """
    with storage_errors("change the case status"):
        async with db.begin() as connection:
            # FOR UPDATE (ignored by SQLite, whose writers are serialised anyway) makes two
            # concurrent changes of one case check against each other's result.
            row = (
                await connection.execute(
                    sa.select(_CASES.c.id, _CASES.c.status)
                    .where(_CASES.c.case_no == case_no)
                    .with_for_update()
                )
            ).one_or_none()
            if row is None:
                raise LookupError(f"no case {case_no}")
            case_id, old_value = row
            old = CaseStatus(old_value)
            check_transition(old, new)
            await connection.execute(
                sa.update(_CASES)
                .where(_CASES.c.id == case_id)
                .values(status=new.value, updated_at=now)
            )
            await connection.execute(
                sa.insert(_CHANGES).values(
                    case_id=case_id, old=old.value, new=new.value, at=now, actor=actor
                )
            )
    log.info("case %s: %s -> %s (by %s)", case_no, old.value, new.value, actor)
    return old
