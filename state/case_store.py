"""Reading and writing cases and what hangs off them: async functions over an AsyncEngine.

Contract of every function here, and of the other stores (``state.media_store``,
``state.callback_store``, ``state.organisation_store``):

- It takes the application's ``AsyncEngine`` (``state.db.create_engine``) and runs as **one
  short transaction** of its own (``engine.begin()``; on PostgreSQL, ``create_case`` is one
  statement on its own): all of it is stored, or none of it. (``create_case`` takes more only
  to repair what a filing found missing: the organisation's row, or a counter behind the
  stored cases.)
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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
import sqlalchemy.exc
from sqlalchemy.dialects import postgresql
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
    key cost about as much CPU as executing it; built once, SQLAlchemy's compiled cache finds
    them at once.
    """

    ensure_organisation: Any
    #: PostgreSQL: the whole filing as one statement (see ``_file_case_postgresql``);
    #: ``None`` on SQLite, which has no data-modifying CTEs and files statement by statement.
    file_case: Any | None
    insert_case: Any
    insert_changes: Any
    insert_parties: Any
    ensure_media: Any
    insert_evidence: Any
    insert_intake: Any
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
    return _FilingStatements(
        # Organisations are synced at start-up; this repairs the foreign key when a filing finds
        # its organisation missing (a database restored or emptied since), see create_case.
        ensure_organisation=insert(_ORGS).on_conflict_do_nothing(index_elements=[_ORGS.c.code]),
        file_case=_one_statement_filing(next_counter) if backend == "postgresql" else None,
        insert_case=sa.insert(_CASES).returning(_CASES.c.id),
        insert_changes=sa.insert(_CHANGES),
        insert_parties=sa.insert(_PARTIES),
        ensure_media=insert(_MEDIA).on_conflict_do_nothing(index_elements=[_MEDIA.c.media_id]),
        insert_evidence=sa.insert(_EVIDENCE),
        insert_intake=sa.insert(_INTAKE),
        next_counter=next_counter,
        set_case_no=sa.update(_CASES)
        .where(_CASES.c.id == sa.bindparam("case_row"))
        .values(case_no=sa.bindparam("new_case_no")),
    )


#: Columns of the rows a filing inserts beside the case, in the order of ``_FilingRows``.
_CHANGE_COLUMNS = ("old", "new", "at", "actor")
_PARTY_COLUMNS = (
    "role",
    "name",
    "phone",
    "id_number_ciphertext",
    "id_number_masked",
    "id_number_index",
)
_MEDIA_COLUMNS = ("media_id", "openid", "kind", "status", "created_at", "updated_at")
_EVIDENCE_COLUMNS = ("media_id", "kind", "title", "created_at")
_INTAKE_COLUMNS = ("seq", "direction", "msg_type", "content", "created_at")
#: The case's own columns a filing sets (``id`` is the database's; ``case_no`` comes last).
_CASE_COLUMNS = tuple(c.name for c in _CASES.c if c.name not in ("id", "case_no"))


def _one_statement_filing(next_counter: Any) -> Any:
    """PostgreSQL: a whole filing as one statement, returning the new case's number.

    ``WITH counter AS (bump the day's counter), new_case AS (INSERT the case numbered from it),
    changes/parties/media/evidence/intake AS (INSERT … SELECT new_case.id, … FROM unnest(arrays))
    SELECT case_no FROM new_case``. Each kind of row travels as one array per column, so a
    filing costs one round trip whatever its size, instead of eight (BEGIN, five INSERTs, the
    number, COMMIT), which made filing the largest CPU cost of an intake message. Run on its own
    (autocommit), the statement is its own transaction: all of it is stored or none. Foreign
    keys are checked at the end of the statement, so the child rows may name the case (and the
    evidence its media rows) inserted beside them.
    """
    counter = next_counter.cte("counter")
    digits = sa.cast(counter.c.last_value, sa.Text)
    # CaseNumber's "{counter:04d}": at least four digits, more when the day needs them.
    padded = sa.func.lpad(digits, sa.func.greatest(4, sa.func.length(digits)), "0")
    number = sa.bindparam("day_prefix", type_=sa.Text) + padded
    case_values = [
        sa.bindparam(f"case_{name}", type_=_CASES.c[name].type) for name in _CASE_COLUMNS
    ]
    new_case = (
        sa.insert(_CASES)
        .from_select(
            ["case_no", *_CASE_COLUMNS], sa.select(number, *case_values).select_from(counter)
        )
        .returning(_CASES.c.id, _CASES.c.case_no)
        .cte("new_case")
    )

    def unnest(table: sa.Table, columns: Sequence[str]) -> Any:
        arrays = [
            sa.bindparam(f"{table.name}_{name}", type_=postgresql.ARRAY(_unbounded(table.c[name])))
            for name in columns
        ]
        return (
            sa.func.unnest(*arrays)
            .table_valued(*(sa.column(name, table.c[name].type) for name in columns))
            .render_derived(name="given")
        )

    def case_rows(table: sa.Table, columns: Sequence[str]) -> Any:
        rows = unnest(table, columns)
        select = sa.select(new_case.c.id, *(rows.c[name] for name in columns)).select_from(
            new_case.join(rows, sa.true())  # one case, each of its rows
        )
        return sa.insert(table).from_select(["case_id", *columns], select).cte(table.name)

    media_rows = unnest(_MEDIA, _MEDIA_COLUMNS)
    media = (
        postgresql.insert(_MEDIA)
        .from_select(list(_MEDIA_COLUMNS), sa.select(*(media_rows.c[n] for n in _MEDIA_COLUMNS)))
        .on_conflict_do_nothing(index_elements=[_MEDIA.c.media_id])
        .cte("media")
    )
    return sa.select(new_case.c.case_no).add_cte(
        case_rows(_CHANGES, _CHANGE_COLUMNS),
        case_rows(_PARTIES, _PARTY_COLUMNS),
        media,
        case_rows(_EVIDENCE, _EVIDENCE_COLUMNS),
        case_rows(_INTAKE, _INTAKE_COLUMNS),
    )


def _unbounded(column: sa.Column[Any]) -> Any:
    """The array element type for ``column``: a text column's without its length.

    PostgreSQL's cast to ``varchar(n)`` cuts a longer value short without a word; cast to plain
    ``varchar``, an over-long value reaches the column's own check and is refused, as a single
    INSERT refuses it.
    """
    # SQLModel's text columns are ``AutoString`` (a TypeDecorator), so ask for a length instead
    # of a type.
    return sa.String() if getattr(column.type, "length", None) is not None else column.type


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
    rows = _FilingRows.of(
        draft,
        openid=applicant_openid,
        organisation=organisation,
        accept_deadline=accept_deadline,
        intake=intake,
        now=now,
        submission_key=submission_key,
        protector=protector,
    )
    day = china_day(now)
    statements = _filing_statements(db.dialect.name)
    repaired: set[str] = set()
    with storage_errors("store the new case"):
        while True:
            try:
                case_no = await _store_filing(db, statements, rows, day)
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
class _FilingRows:
    """What a filing stores, as values: the case's own (``_CASE_COLUMNS``) and its rows'
    (each a tuple in the order of its ``_*_COLUMNS``; ``case_id`` is added as they go in)."""

    case: dict[str, Any]
    changes: list[tuple[Any, ...]]
    parties: list[tuple[Any, ...]]
    media: list[tuple[Any, ...]]
    evidence: list[tuple[Any, ...]]
    intake: list[tuple[Any, ...]]

    @classmethod
    def of(
        cls,
        draft: CaseDraft,
        *,
        openid: str,
        organisation: Organisation,
        accept_deadline: date,
        intake: Sequence[IntakeLine],
        now: datetime,
        submission_key: str | None,
        protector: PersonalDataProtector,
    ) -> _FilingRows:
        case = {
            "submission_key": submission_key,
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
            "org_code": organisation.code,
            "applicant_openid": openid,
            "accept_deadline": accept_deadline,
            "created_at": now,
            "updated_at": now,
        }
        submitted, routed = CaseStatus.SUBMITTED.value, INITIAL_STATUS.value
        changes = [
            (None, submitted, now, f"applicant:{openid}"),
            (submitted, routed, now, f"routing:{organisation.code}"),
        ]
        id_number = normalise_id_number(draft.applicant_id_number)
        parties = [
            (
                APPLICANT,
                draft.applicant_name,
                draft.applicant_phone,
                protector.encrypt(id_number, purpose=ID_NUMBER_PURPOSE),
                mask_id_number(id_number),
                protector.blind_index(id_number, purpose=ID_NUMBER_PURPOSE),
            ),
            (RESPONDENT, draft.respondent_name, draft.respondent_phone, None, None, None),
        ]
        evidence = [(item.media_id, item.kind, item.title) for item in draft.evidence]
        voice = draft.facts_voice_media_id
        if voice and all(media_id != voice for media_id, _, _ in evidence):
            evidence.append((voice, EvidenceKind.VOICE, FACTS_VOICE_TITLE))
        media = [
            tuple(pending_media_row(m, openid, kind.value, now)[c] for c in _MEDIA_COLUMNS)
            for m, kind, _ in evidence
        ]
        intake_rows = [
            (seq, line.direction, line.msg_type, redact_id_numbers(line.content), line.at)
            for seq, line in enumerate(intake, start=1)
        ]
        return cls(
            case,
            changes,
            parties,
            media,
            [(m, kind.value, title, now) for m, kind, title in evidence],
            intake_rows,
        )


async def _store_filing(
    db: AsyncEngine, statements: _FilingStatements, rows: _FilingRows, day: date
) -> str:
    """Store one filing as one transaction; return its case number."""
    if statements.file_case is not None:
        async with db.connect() as connection:
            # One statement is its own transaction: no BEGIN and COMMIT round trips around it.
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            return await _file_case_postgresql(connection, statements.file_case, rows, day)
    async with db.begin() as connection:
        return await _file_case_in_steps(connection, statements, rows, day)


async def _file_case_postgresql(
    connection: AsyncConnection, statement: Any, rows: _FilingRows, day: date
) -> str:
    """One statement (``_one_statement_filing``); ``connection`` must be in autocommit."""
    values: dict[str, Any] = {f"case_{name}": value for name, value in rows.case.items()}
    values.update(counter_day=day, day_prefix=_day_prefix(day))
    for table, columns, table_rows in (
        (_CHANGES, _CHANGE_COLUMNS, rows.changes),
        (_PARTIES, _PARTY_COLUMNS, rows.parties),
        (_MEDIA, _MEDIA_COLUMNS, rows.media),
        (_EVIDENCE, _EVIDENCE_COLUMNS, rows.evidence),
        (_INTAKE, _INTAKE_COLUMNS, rows.intake),
    ):
        for index, name in enumerate(columns):
            values[f"{table.name}_{name}"] = [row[index] for row in table_rows]
    numbered = await connection.execute(statement, values)
    # Parsed back so that SQL's formatting can never drift from CaseNumber's unnoticed.
    return str(CaseNumber.parse(numbered.scalar_one()))


async def _file_case_in_steps(
    connection: AsyncConnection, statements: _FilingStatements, rows: _FilingRows, day: date
) -> str:
    """Statement by statement, inside the caller's transaction (SQLite)."""
    # The case goes in under a placeholder number; the real one is allocated as the last
    # statement, so that the counter row's lock (which serialises every filing of the day) is
    # held for that statement and the commit only, not the whole filing.
    placeholder = "pending-" + secrets.token_hex(12)
    insert_case = statements.insert_case
    case_id: int = (
        await connection.execute(insert_case, {"case_no": placeholder, **rows.case})
    ).scalar_one()

    def with_case(
        columns: Sequence[str], table_rows: list[tuple[Any, ...]]
    ) -> list[dict[str, Any]]:
        return [{"case_id": case_id, **dict(zip(columns, row, strict=True))} for row in table_rows]

    await connection.execute(statements.insert_changes, with_case(_CHANGE_COLUMNS, rows.changes))
    await connection.execute(statements.insert_parties, with_case(_PARTY_COLUMNS, rows.parties))
    if rows.evidence:
        media = [dict(zip(_MEDIA_COLUMNS, row, strict=True)) for row in rows.media]
        await connection.execute(statements.ensure_media, media)
        evidence = with_case(_EVIDENCE_COLUMNS, rows.evidence)
        await connection.execute(statements.insert_evidence, evidence)
    if rows.intake:
        await connection.execute(statements.insert_intake, with_case(_INTAKE_COLUMNS, rows.intake))
    counter = await connection.execute(statements.next_counter, {"counter_day": day})
    case_no = str(CaseNumber(day, counter.scalar_one()))
    await connection.execute(statements.set_case_no, {"case_row": case_id, "new_case_no": case_no})
    return case_no


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
