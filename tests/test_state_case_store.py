from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from cases.draft import (
    CaseDraft,
    Category,
    EvidenceItem,
    EvidenceKind,
    LanguageNeed,
    MediationMode,
    Place,
)
from cases.routing import Organisation, OrganisationKind, RoutingRule, RoutingTable
from cases.status import CaseStatus
from config.routing import load_routing_table
from jiefen.errors import InvalidTransition
from state import callback_store, case_store, media_store, organisation_store
from state.case_store import IntakeLine
from state.db import create_engine, migrate
from state.personal_data import PersonalDataProtector

ID_NUMBER = "11010519491231002X"
PROTECTOR = PersonalDataProtector(bytes(range(32)))
ORG = Organisation(
    "gd-guanshang", "官渡区关上街道人民调解委员会", OrganisationKind.COMMUNITY, "0871-6000 1101"
)
# 02:00 UTC is 10:00 in Kunming, the same China day.
NOW = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)
DEADLINE = date(2026, 11, 26)


def make_draft(**changes: Any) -> CaseDraft:
    draft = CaseDraft(
        category=Category.NEIGHBOUR,
        applicant_name="张三",
        applicant_phone="13800138000",
        applicant_id_number=ID_NUMBER,
        respondent_name="李四",
        respondent_phone=None,
        place=Place("官渡区关上街道某小区", 25.0, 102.7),
        facts="楼上漏水，多次沟通无果。",
        claim="赔偿维修费",
        amount_yuan=Decimal("3500.50"),
        mode=MediationMode.VIDEO,
        language=LanguageNeed("彝语", needs_interpreter=True),
        evidence=(EvidenceItem("media-1", EvidenceKind.IMAGE, "漏水照片"),),
        facts_voice_media_id="voice-1",
    )
    return dataclasses.replace(draft, **changes)


INTAKE = [
    IntakeLine("out", "text", "请输入您的身份证号码", NOW - timedelta(minutes=5)),
    IntakeLine("in", "text", f"我的身份证是 {ID_NUMBER.lower()}", NOW - timedelta(minutes=4)),
    IntakeLine("in", "voice", "楼上漏水", NOW - timedelta(minutes=3)),
]


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    migrate(database_url)
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


async def file_case(
    db: AsyncEngine,
    now: datetime = NOW,
    openid: str = "o-resident",
    submission_key: str | None = None,
    **changes: Any,
) -> case_store.CreatedCase:
    return await case_store.create_case(
        db,
        make_draft(**changes),
        applicant_openid=openid,
        organisation=ORG,
        accept_deadline=DEADLINE,
        intake=INTAKE,
        protector=PROTECTOR,
        now=now,
        submission_key=submission_key,
    )


async def dump_everything(db: AsyncEngine) -> str:
    """Every value in every table, as text: what someone with the database file would see."""
    parts: list[str] = []
    async with db.connect() as connection:
        names = await connection.run_sync(lambda sync: sa.inspect(sync).get_table_names())
        for name in names:
            rows = (await connection.execute(sa.text(f'SELECT * FROM "{name}"'))).all()
            parts.extend(repr(value) for row in rows for value in row)
    return "\n".join(parts)


async def test_create_case_round_trip(db: AsyncEngine) -> None:
    created = await file_case(db)
    assert created == case_store.CreatedCase(
        "JF20261121-0001", ORG.name, ORG.phone, DEADLINE, CaseStatus.AWAITING_ACCEPTANCE
    )
    record = await case_store.get_case(db, created.case_no)
    assert record is not None
    assert record.status is CaseStatus.AWAITING_ACCEPTANCE
    assert record.category is Category.NEIGHBOUR
    assert record.org_code == ORG.code
    assert record.amount_yuan == Decimal("3500.50")
    assert (record.place_lat, record.place_lng) == (25.0, 102.7)
    assert (record.language, record.needs_interpreter, record.mode) == ("彝语", True, "video")
    assert record.accept_deadline == DEADLINE
    assert record.created_at == NOW and record.created_at.tzinfo is not None
    assert [(p.role, p.name, p.phone, p.id_number_masked) for p in record.parties] == [
        ("applicant", "张三", "13800138000", "1101**********002X"),
        ("respondent", "李四", None, None),
    ]
    assert [(e.media_id, e.kind, e.title, e.media_status) for e in record.evidence] == [
        ("media-1", EvidenceKind.IMAGE, "漏水照片", "pending"),
        ("voice-1", EvidenceKind.VOICE, "事实陈述（语音）", "pending"),
    ]
    assert [line.content for line in record.intake] == [
        "请输入您的身份证号码",
        "我的身份证是 1101**********002X",
        "楼上漏水",
    ]
    assert record.intake[0].at == INTAKE[0].at
    assert record.history == (
        (None, CaseStatus.SUBMITTED, "applicant:o-resident"),
        (CaseStatus.SUBMITTED, CaseStatus.AWAITING_ACCEPTANCE, f"routing:{ORG.code}"),
    )
    assert await case_store.get_case(db, "JF20261121-0002") is None


async def test_id_number_is_encrypted_at_rest(db: AsyncEngine) -> None:
    await file_case(db, facts=f"对方身份证 {ID_NUMBER} 我也知道")
    everything = await dump_everything(db)
    assert ID_NUMBER not in everything.upper()
    assert "1101**********002X" in everything
    async with db.connect() as connection:
        token, index = (
            await connection.execute(
                sa.text(
                    "SELECT id_number_ciphertext, id_number_index FROM parties"
                    " WHERE role = 'applicant'"
                )
            )
        ).one()
    assert PROTECTOR.decrypt(token, purpose="id_number") == ID_NUMBER
    assert index == PROTECTOR.blind_index(ID_NUMBER)


async def test_filing_the_same_intake_twice_gives_back_the_first_case(db: AsyncEngine) -> None:
    first = await file_case(db, submission_key="intake:abc")
    again = await file_case(db, now=NOW + timedelta(minutes=1), submission_key="intake:abc")
    other = await file_case(db, submission_key="intake:other")
    assert again == first
    assert other.case_no == "JF20261121-0002"  # the retry took no number
    async with db.connect() as connection:
        count = (await connection.execute(sa.text("SELECT count(*) FROM cases"))).scalar_one()
    assert count == 2


async def test_numbers_restart_each_china_day(db: AsyncEngine) -> None:
    first = await file_case(db)
    second = await file_case(db, now=NOW + timedelta(hours=1))
    # 16:30 UTC on the 21st is already the 22nd in China.
    next_day = await file_case(db, now=datetime(2026, 11, 21, 16, 30, tzinfo=UTC))
    assert [first.case_no, second.case_no, next_day.case_no] == [
        "JF20261121-0001",
        "JF20261121-0002",
        "JF20261122-0001",
    ]


async def test_concurrent_filings_get_distinct_consecutive_numbers(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    migrate(database_url)
    caplog.set_level(logging.WARNING, logger="state.case_store")
    # Several engines stand for several processes, each with its own pool.
    engines = [create_engine(database_url, pool_size=5, max_overflow=5) for _ in range(5)]
    try:
        # The organisation is there, as start-up makes it: no filing needs the FK repair.
        await organisation_store.sync_organisations(engines[0], RoutingTable([ORG], [], ORG.code))
        created = await asyncio.gather(
            *(file_case(engines[i % len(engines)], openid=f"o-{i}") for i in range(50))
        )
        numbers = sorted(int(c.case_no.rsplit("-", 1)[1]) for c in created)
        assert numbers == list(range(1, 51))
        async with engines[0].connect() as connection:
            count = (await connection.execute(sa.text("SELECT count(*) FROM cases"))).scalar()
            counter = (
                await connection.execute(sa.text("SELECT last_value FROM case_number_counters"))
            ).scalar()
        assert (count, counter) == (50, 50)
        # Distinct because the counter serialised the filings, not because collisions on the
        # unique case number were repaired afterwards.
        assert caplog.records == []
    finally:
        for engine in engines:
            await engine.dispose()


async def test_list_by_openid_newest_first(db: AsyncEngine) -> None:
    for hours in (0, 2, 1):
        await file_case(db, now=NOW + timedelta(hours=hours), openid="o-a")
    await file_case(db, openid="o-b")
    listing = await case_store.list_cases_for_openid(db, "o-a")
    assert [item.created_at for item in listing] == [
        NOW + timedelta(hours=2),
        NOW + timedelta(hours=1),
        NOW,
    ]
    assert [item.case_no for item in listing] == [
        "JF20261121-0002",
        "JF20261121-0003",
        "JF20261121-0001",
    ]
    assert listing[0].status is CaseStatus.AWAITING_ACCEPTANCE
    assert listing[0].category is Category.NEIGHBOUR
    assert len(await case_store.list_cases_for_openid(db, "o-a", limit=2)) == 2
    assert await case_store.list_cases_for_openid(db, "o-nobody") == []


async def test_status_changes_are_checked_and_recorded(db: AsyncEngine) -> None:
    created = await file_case(db)
    later = NOW + timedelta(days=1)
    old = await case_store.set_case_status(
        db, created.case_no, CaseStatus.ACCEPTED, actor="mediator:7", now=later
    )
    assert old is CaseStatus.AWAITING_ACCEPTANCE
    with pytest.raises(InvalidTransition, match="accepted -> settled"):
        await case_store.set_case_status(
            db, created.case_no, CaseStatus.SETTLED, actor="mediator:7", now=later
        )
    with pytest.raises(LookupError):
        await case_store.set_case_status(
            db, "JF20990101-0001", CaseStatus.ACCEPTED, actor="x", now=later
        )
    record = await case_store.get_case(db, created.case_no)
    assert record is not None
    assert record.status is CaseStatus.ACCEPTED and record.updated_at == later
    assert record.history[-1] == (CaseStatus.AWAITING_ACCEPTANCE, CaseStatus.ACCEPTED, "mediator:7")


async def test_media_blob_lifecycle_is_idempotent(db: AsyncEngine) -> None:
    await media_store.media_blob_pending(db, "m-1", "o-a", "image", NOW)
    await media_store.media_blob_pending(db, "m-1", "o-other", "voice", NOW + timedelta(seconds=1))
    blob = await media_store.get_media_blob(db, "m-1")
    assert blob is not None
    assert (blob.status, blob.openid, blob.kind, blob.created_at) == (
        "pending",
        "o-a",
        "image",
        NOW,
    )

    await media_store.media_blob_failed(db, "m-1", "timeout", NOW + timedelta(seconds=2))
    blob = await media_store.get_media_blob(db, "m-1")
    assert blob is not None and (blob.status, blob.error) == ("failed", "timeout")

    later = NOW + timedelta(seconds=3)
    for _ in range(2):
        await media_store.media_blob_stored(
            db, "m-1", "ab/cd.jpg", "0" * 64, 1234, "image/jpeg", later
        )
    await media_store.media_blob_failed(db, "m-1", "late retry failed", later)
    blob = await media_store.get_media_blob(db, "m-1")
    assert blob is not None
    assert (blob.status, blob.path, blob.sha256, blob.size, blob.content_type, blob.error) == (
        "stored", "ab/cd.jpg", "0" * 64, 1234, "image/jpeg", None
    )  # fmt: skip
    assert blob.updated_at == later

    assert await media_store.get_media_blob(db, "m-unknown") is None
    with pytest.raises(LookupError):
        await media_store.media_blob_stored(db, "m-unknown", "x", "0" * 64, 1, None, later)


async def test_evidence_fetched_before_filing_keeps_its_media_row(db: AsyncEngine) -> None:
    await media_store.media_blob_pending(db, "media-1", "o-resident", "image", NOW)
    await media_store.media_blob_stored(db, "media-1", "k", "1" * 64, 9, "image/png", NOW)
    created = await file_case(db)
    record = await case_store.get_case(db, created.case_no)
    assert record is not None
    assert [e.media_status for e in record.evidence] == ["stored", "pending"]


async def test_callback_requests(db: AsyncEngine) -> None:
    first = await callback_store.record_callback_request(
        db, "o-a", "applicant_id", "不会填身份证", NOW
    )
    second = await callback_store.record_callback_request(db, "o-a", None, "", NOW)
    assert second != first
    async with db.connect() as connection:
        rows = (
            await connection.execute(
                sa.text("SELECT openid, step, note, handled_at FROM callback_requests ORDER BY id")
            )
        ).all()
    assert [tuple(row) for row in rows] == [
        ("o-a", "applicant_id", "不会填身份证", None),
        ("o-a", None, "", None),
    ]


async def test_sync_organisations(db: AsyncEngine) -> None:
    bundled = load_routing_table(None)
    await organisation_store.sync_organisations(db, bundled, now=NOW)
    await organisation_store.sync_organisations(db, bundled, now=NOW)
    renamed = dataclasses.replace(bundled.default, name="新名称")
    smaller = RoutingTable([renamed, ORG], [RoutingRule(ORG.code)], renamed.code)
    await organisation_store.sync_organisations(db, smaller, now=NOW)
    async with db.connect() as connection:
        rows = (
            await connection.execute(
                sa.text("SELECT code, name, active, districts FROM organisations")
            )
        ).all()
    by_code = {code: (name, bool(active)) for code, name, active, _ in rows}
    assert len(by_code) == len(bundled.organisations)
    assert by_code[renamed.code] == ("新名称", True)
    assert by_code[ORG.code] == (ORG.name, True)
    assert by_code["gd-labour"][1] is False
    assert sum(active for _, active in by_code.values()) == 2


async def test_a_counter_behind_the_cases_is_repaired(db: AsyncEngine) -> None:
    await file_case(db)
    await file_case(db)
    async with db.begin() as connection:
        await connection.execute(sa.text("DELETE FROM case_number_counters"))
    assert (await file_case(db)).case_no == "JF20261121-0003"
    assert (await file_case(db)).case_no == "JF20261121-0004"
    async with db.begin() as connection:
        await connection.execute(sa.text("UPDATE case_number_counters SET last_value = 1"))
    assert (await file_case(db)).case_no == "JF20261121-0005"


async def test_numbers_past_9999_keep_every_digit(db: AsyncEngine) -> None:
    await file_case(db)
    async with db.begin() as connection:
        await connection.execute(sa.text("UPDATE case_number_counters SET last_value = 9998"))
    numbers = [(await file_case(db, openid=f"o-{i}")).case_no for i in range(2)]
    assert numbers == ["JF20261121-9999", "JF20261121-10000"]


async def test_a_filing_adds_its_organisation_when_the_database_lacks_it(
    db: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    # Organisations are synced at start-up; this database never was (as if restored since).
    caplog.set_level(logging.WARNING, logger="state.case_store")
    first = await file_case(db)
    second = await file_case(db, openid="o-other")
    assert [first.case_no, second.case_no] == ["JF20261121-0001", "JF20261121-0002"]
    async with db.connect() as connection:
        rows = (await connection.execute(sa.text("SELECT code, name FROM organisations"))).all()
    assert [tuple(row) for row in rows] == [(ORG.code, ORG.name)]
    # Repaired once, by the first filing; the second found the row.
    repairs = [r.getMessage() for r in caplog.records if "missing" in r.getMessage()]
    assert repairs == [f"organisation {ORG.code} missing; adding it"]


async def test_open_callback_requests_are_listed_oldest_first_until_handled(
    db: AsyncEngine,
) -> None:
    from state import callback_store

    first = await callback_store.record_callback_request(db, "o-1", "phone", "请回电", NOW)
    second = await callback_store.record_callback_request(
        db, "o-2", None, "想咨询", NOW + timedelta(minutes=5)
    )
    listed = await callback_store.list_open_callback_requests(db)
    assert [(r.request_id, r.openid, r.step) for r in listed] == [
        (first, "o-1", "phone"),
        (second, "o-2", None),
    ]
    assert await callback_store.mark_callback_handled(db, first, NOW + timedelta(hours=1))
    assert not await callback_store.mark_callback_handled(db, first, NOW + timedelta(hours=2))
    assert [r.request_id for r in await callback_store.list_open_callback_requests(db)] == [second]


async def test_an_over_long_value_is_refused_not_cut_short(pg_database_url: str) -> None:
    """A value longer than its column fails the filing, storing nothing: never stored cut
    short, naming another media item. (PostgreSQL only: SQLite does not check lengths.)"""
    migrate(pg_database_url)
    db = create_engine(pg_database_url)
    try:
        long_media_id = "m" * 129  # media_id is VARCHAR(128)
        evidence = (EvidenceItem(long_media_id, EvidenceKind.IMAGE, "照片"),)
        with pytest.raises(sa.exc.DBAPIError, match="too long"):
            await file_case(db, evidence=evidence)
        with pytest.raises(sa.exc.DBAPIError, match="too long"):
            await file_case(db, respondent_name="李" * 201)  # name is VARCHAR(200)
        async with db.connect() as connection:
            for table in ("cases", "media_blobs", "evidence", "parties", "intake_messages"):
                count = await connection.execute(sa.text(f"SELECT count(*) FROM {table}"))
                assert count.scalar() == 0, table
    finally:
        await db.dispose()
