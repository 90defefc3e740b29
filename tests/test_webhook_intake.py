"""A resident files a dispute through the real webhook, end to end, on real Redis and PostgreSQL.

WeChat's side is the simulator (signed, encrypted pushes, retries) and the fake WeChat API (pushed
replies, media); everything else is the real server on 127.0.0.1 port 0.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa

from bot.bench_webhook import intake_script
from bot.conversation import TRANSCRIPT_PURPOSE
from bot.fake_wechat_api import CUSTOM_SEND_PATH
from bot.wechat_simulator import CryptoMode, NoReply, Reply
from state import case_store, media_store
from state.message_gate import MessageGate, Turn
from state.personal_data import PersonalDataProtector, load_or_create_data_key
from tests.conftest import DATABASE_ADMIN_URL, REDIS_URL
from tests.harness import RunningJiefen, eventually, running_jiefen

CASE_NO = re.compile(r"JF\d{8}-\d{4,}")
SCRIPT = intake_script(1)
STEP = {name: SCRIPT.index(text) for name, text in [("consent", "同意"), ("evidence", "完成")]}
STEP["facts"] = 9
STEP["summary"] = len(SCRIPT) - 1  # the index of 「确认」

Factory = Callable[..., Awaitable[RunningJiefen]]


@pytest.fixture
async def start(
    pg_database_url: str, redis_client: object, redis_prefix: str, tmp_path: Path
) -> AsyncIterator[Factory]:
    """Start Jiefen (several times if a test wants: same database, Redis and files)."""
    stack: list[Any] = []

    async def factory(**overrides: Any) -> RunningJiefen:
        context = running_jiefen(
            database_url=pg_database_url,
            redis_url=REDIS_URL,
            redis_prefix=redis_prefix,
            data_dir=tmp_path,
            **overrides,
        )
        stack.append(context)
        return await context.__aenter__()

    yield factory
    for context in reversed(stack):
        await context.__aexit__(None, None, None)


async def _fill(jiefen: RunningJiefen, openid: str, upto: int) -> list[str]:
    """Answer the intake script up to (not including) message number ``upto``."""
    return [await jiefen.say(openid, text) for text in SCRIPT[:upto]]


@pytest.mark.parametrize("mode", [CryptoMode.PLAIN, CryptoMode.COMPAT, CryptoMode.SAFE])
async def test_a_resident_files_a_dispute_in_every_crypto_mode(
    start: Factory, mode: CryptoMode
) -> None:
    jiefen = await start(mode=mode)
    openid = f"o_resident_{mode.value}"
    welcome = await jiefen.send(jiefen.simulator.subscribe(openid))
    assert isinstance(welcome.reply, Reply) and "我要调解" in (welcome.reply.content or "")
    assert welcome.reply.encrypted == (mode is not CryptoMode.PLAIN)
    replies = await _fill(jiefen, openid, len(SCRIPT))
    match = CASE_NO.search(replies[-1])
    assert match, replies[-1]
    record = await case_store.get_case(jiefen.services.db, match.group(0))
    assert record is not None
    assert record.applicant_openid == openid
    assert record.category.value == "neighbour"
    assert record.amount_yuan == 3500
    assert record.org_code  # routed
    applicant = next(p for p in record.parties if p.role == "applicant")
    assert applicant.name == "张三丰" and applicant.id_number_masked == "5301**********608X"
    respondent = next(p for p in record.parties if p.role == "respondent")
    assert respondent.name == "李四" and respondent.phone is None
    # What the resident sent, and what we said up to the confirmation, kept with the case.
    directions = [line.direction for line in record.intake]
    assert directions.count("in") == len(SCRIPT)
    assert directions.count("out") == len(SCRIPT) - 1
    # The ID number is nowhere in the database in the clear, transcript included.
    async with jiefen.services.db.connect() as connection:
        for table in ("parties", "intake_messages", "cases"):
            rows = (await connection.execute(sa.text(f"SELECT * FROM {table}"))).all()
            assert "53010219900307608" not in repr(rows), table
    # The finished intake leaves no conversation behind in Redis.
    prefix = jiefen.settings.redis_prefix
    for leftover in ("conversation", "transcript"):
        assert await jiefen.services.redis.keys(f"{prefix}user:*:{leftover}") == []
    listing = await jiefen.say(openid, "查询")
    assert match.group(0) in listing


async def test_mistyped_id_numbers_are_masked_in_the_transcript(start: Factory) -> None:
    # Redaction of free text only knows a valid ID number by its checksum; at the ID step,
    # whatever the resident types is masked, mistakes included (a command is kept as typed).
    jiefen = await start()
    openid = "o_mistyped_id"
    id_step = STEP["consent"] + 4  # consent, category, name, phone, then the ID number
    assert SCRIPT[id_step] == "53010219900307608x"
    await _fill(jiefen, openid, id_step)
    wrong_check = "530102199003076081"  # one character off: checksum fails
    too_short = "5301 0219 9003 0760"  # 16 digits
    for attempt in (wrong_check, too_short, "帮助"):
        assert "身份证" in await jiefen.say(openid, attempt)  # asked again / explained
    for text in SCRIPT[id_step:]:
        reply = await jiefen.say(openid, text)
    match = CASE_NO.search(reply)
    assert match, reply
    record = await case_store.get_case(jiefen.services.db, match.group(0))
    assert record is not None
    said = [line.content for line in record.intake if line.direction == "in"]
    assert "5301**********6081" in said and "帮助" in said
    async with jiefen.services.db.connect() as connection:
        rows = (await connection.execute(sa.text("SELECT * FROM intake_messages"))).all()
    for typed in (wrong_check, too_short, "0219 9003", "53010219900307608"):
        assert typed not in repr(rows)


async def test_a_transcript_stored_line_by_line_before_an_upgrade_is_filed_whole(
    start: Factory,
) -> None:
    # Entries now hold one message's lines; an intake begun before that has one line each.
    jiefen = await start()
    openid = "o_upgraded"
    await _fill(jiefen, openid, STEP["summary"])
    sealer = PersonalDataProtector(load_or_create_data_key(jiefen.settings))
    old_line = {"d": "in", "t": "text", "c": "升级前的一行", "at": "2026-11-01T08:00:00+00:00"}
    sealed = sealer.encrypt(json.dumps(old_line, ensure_ascii=False), purpose=TRANSCRIPT_PURPOSE)
    transcript = f"{jiefen.settings.redis_prefix}user:gh_jiefen:{openid}:transcript"
    await jiefen.services.redis.lpush(transcript, sealed)
    match = CASE_NO.search(await jiefen.say(openid, "确认"))
    assert match
    record = await case_store.get_case(jiefen.services.db, match.group(0))
    assert record is not None
    assert record.intake[0].content == "升级前的一行"
    assert [line.direction for line in record.intake].count("in") == len(SCRIPT) + 1


async def test_a_duplicate_msgid_is_handled_once_and_answered_the_same(start: Factory) -> None:
    jiefen = await start()
    openid = "o_dup"
    await _fill(jiefen, openid, STEP["consent"])
    push = jiefen.simulator.text(openid, "同意")
    first, again = await jiefen.send(push), await jiefen.send(push)
    assert isinstance(first.reply, Reply) and isinstance(again.reply, Reply)
    assert first.reply.content == again.reply.content
    assert "纠纷" in (first.reply.content or "")  # the category question, asked once
    assert "姓名" in await jiefen.say(openid, "1")  # consent was taken once: now at the name


async def test_a_retry_arriving_while_the_first_is_in_flight_gets_the_same_reply(
    start: Factory,
) -> None:
    jiefen = await start()
    openid = "o_retry"
    await _fill(jiefen, openid, STEP["consent"])
    gate = jiefen.conversation_gate()
    # Another message of the same resident holds the turn, so ours has to wait.
    holder = gate.keys("gh_jiefen", openid, "msg:holder")
    held = await gate.begin(holder)
    assert isinstance(held, Turn) and held.ready
    push = jiefen.simulator.text(openid, "同意")
    first = asyncio.create_task(jiefen.send(push))
    await asyncio.sleep(0.3)
    retry = asyncio.create_task(jiefen.send(push))
    await asyncio.sleep(0.3)
    await gate.commit(holder, held, conversation=held.conversation, reply="")
    deliveries = await asyncio.gather(first, retry)
    contents = [d.reply.content for d in deliveries if isinstance(d.reply, Reply)]
    assert len(contents) == 2 and contents[0] == contents[1], deliveries
    assert "姓名" in await jiefen.say(openid, "1")


async def test_two_messages_of_one_resident_arriving_together_are_handled_in_order(
    start: Factory,
) -> None:
    jiefen = await start()
    openid = "o_concurrent"
    await _fill(jiefen, openid, STEP["consent"])
    consent = asyncio.create_task(jiefen.say(openid, "同意"))
    await asyncio.sleep(0.005)
    category = asyncio.create_task(jiefen.say(openid, "1"))
    first_reply, second_reply = await asyncio.gather(consent, category)
    assert "纠纷" in first_reply
    assert "姓名" in second_reply


async def test_a_slow_answer_is_pushed_and_a_retry_does_not_repeat_it(start: Factory) -> None:
    jiefen = await start(passive_reply_deadline_s=0.0)
    openid = "o_slow"
    push = jiefen.simulator.subscribe(openid)
    delivery = await jiefen.send(push)
    assert isinstance(delivery.reply, NoReply) and delivery.reply.body == "success"
    pushed = await jiefen.wait_for_pushes(openid, 1)
    assert len(pushed) == 1 and "我要调解" in pushed[0]
    retry = await jiefen.send(push)
    assert isinstance(retry.reply, NoReply)
    await asyncio.sleep(0.5)
    assert len(await jiefen.wait_for_pushes(openid, 2, wait_s=0.5)) == 1


async def test_a_reply_claimed_in_time_is_answered_passively_though_its_commit_runs_late(
    start: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Decided as the request left, such a reply used to be pushed after the turn had passed
    # on, where the reply to the resident's next message could overtake it.
    jiefen = await start(passive_reply_deadline_s=0.3)
    commit = MessageGate.commit

    async def slow_commit(gate: MessageGate, *args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0.6)  # past the deadline: the reply was claimed before it
        await commit(gate, *args, **kwargs)

    monkeypatch.setattr(MessageGate, "commit", slow_commit)
    delivery = await jiefen.send(jiefen.simulator.subscribe("o_late_commit"))
    assert isinstance(delivery.reply, Reply) and "我要调解" in (delivery.reply.content or "")
    await asyncio.sleep(0.3)
    assert [m for m in jiefen.fake.sent if m.touser == "o_late_commit"] == []


async def test_on_the_embedded_stand_in_a_late_reply_is_pushed_and_not_also_answered(
    sqlite_database_url: str, tmp_path: Path
) -> None:
    # The in-process Redis may finish a commit before the request wakes at its deadline: a
    # reply pushed within the commit must then not be given passively as well.
    async with running_jiefen(
        database_url=sqlite_database_url,
        redis_url="",
        redis_prefix="",
        data_dir=tmp_path,
        passive_reply_deadline_s=0.0,
    ) as jiefen:
        delivery = await jiefen.send(jiefen.simulator.subscribe("o_embedded"))
        assert isinstance(delivery.reply, NoReply) and delivery.reply.body == "success"
        pushed = await jiefen.wait_for_pushes("o_embedded", 1)
        await asyncio.sleep(0.3)
        assert len(pushed) == 1 and "我要调解" in pushed[0]
        assert len(await jiefen.wait_for_pushes("o_embedded", 2, wait_s=0.3)) == 1


async def test_pushed_replies_keep_their_order_when_a_send_fails(start: Factory) -> None:
    jiefen = await start(passive_reply_deadline_s=0.0)
    openid = "o_order"
    # The first reply's send fails on every attempt of the client's own retries.
    jiefen.fake.fail_next(CUSTOM_SEND_PATH, status=500, times=3)
    await jiefen.send(jiefen.simulator.subscribe(openid))
    await jiefen.send(jiefen.simulator.text(openid, "我要调解"))
    pushed = await jiefen.wait_for_pushes(openid, 2, wait_s=20)
    assert len(pushed) == 2
    assert "欢迎" in pushed[0] and "同意" in pushed[1]  # the welcome first, then the consent


async def test_outside_the_48_hour_window_the_push_is_buried_with_the_reason(
    start: Factory,
) -> None:
    jiefen = await start(passive_reply_deadline_s=0.0)
    openid = "o_gone_quiet"
    jiefen.fake.out_of_window(openid)
    await jiefen.send(jiefen.simulator.subscribe(openid))
    dead = await eventually(jiefen.services.jobs.dead_jobs)
    assert len(dead) == 1 and "45015" in dead[0]["errors"][-1]
    assert jiefen.fake.sent == []


async def test_database_down_at_confirmation_loses_nothing(
    start: Factory, pg_database_url: str
) -> None:
    jiefen = await start()
    openid = "o_db_down"
    await _fill(jiefen, openid, STEP["summary"])
    database = pg_database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(DATABASE_ADMIN_URL)
    try:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database
        )
        refused = await jiefen.say(openid, "确认")
        assert not CASE_NO.search(refused)
        assert "确认" in refused  # asked to confirm again shortly
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await admin.close()
    accepted = await jiefen.say(openid, "确认")
    assert CASE_NO.search(accepted), accepted


async def test_confirming_again_after_a_lost_commit_files_no_second_case(start: Factory) -> None:
    """The case is stored but the conversation's commit is lost (Redis failed just then): the
    resident is back at the summary and confirms again. They get the same case, not a twin."""
    jiefen = await start()
    openid = "o_lost_commit"
    await _fill(jiefen, openid, STEP["summary"])
    gate = jiefen.conversation_gate()
    conversation_key = gate.keys("gh_jiefen", openid, "-").conversation
    before_confirming = await jiefen.services.redis.get(conversation_key)
    assert before_confirming
    first = CASE_NO.search(await jiefen.say(openid, "确认"))
    await jiefen.services.redis.set(conversation_key, before_confirming)  # the lost commit
    second = CASE_NO.search(await jiefen.say(openid, "确认"))
    assert first and second and first.group(0) == second.group(0)
    async with jiefen.services.db.connect() as connection:
        count = (await connection.execute(sa.text("SELECT count(*) FROM cases"))).scalar_one()
    assert count == 1


async def test_evidence_is_fetched_from_wechat_into_the_store(
    start: Factory, tmp_path: Path
) -> None:
    jiefen = await start()
    openid = "o_evidence"
    await _fill(jiefen, openid, STEP["evidence"])
    photo = b"\xff\xd8\xff\xe0 a photo of the water damage"
    jiefen.fake.add_media("media-photo-1", photo, "image/jpeg")
    delivery = await jiefen.send(jiefen.simulator.image(openid, "media-photo-1"))
    assert isinstance(delivery.reply, Reply) and "1" in (delivery.reply.content or "")

    async def stored_blob() -> media_store.MediaBlobRecord | None:
        blob = await media_store.get_media_blob(jiefen.services.db, "media-photo-1")
        return blob if blob is not None and blob.status == "stored" else None

    blob = await eventually(stored_blob)
    assert blob is not None and blob.status == "stored" and blob.path
    assert (tmp_path / "evidence" / blob.path).read_bytes() == photo
    replies = [await jiefen.say(openid, text) for text in SCRIPT[STEP["evidence"] :]]
    match = CASE_NO.search(replies[-1])
    assert match
    record = await case_store.get_case(jiefen.services.db, match.group(0))
    assert record is not None
    assert [e.media_id for e in record.evidence] == ["media-photo-1"]


async def test_facts_by_voice_use_wechat_recognition(start: Factory) -> None:
    jiefen = await start()
    openid = "o_voice"
    await _fill(jiefen, openid, STEP["facts"])
    spoken = "隔壁养的狗每天半夜叫，说了好几次也不管，老人睡不好觉。"
    delivery = await jiefen.send(jiefen.simulator.voice(openid, "media-voice-1", spoken))
    assert isinstance(delivery.reply, Reply)
    assert "请求" in (delivery.reply.content or "")  # moved on to the claim


async def test_wechats_own_notices_are_not_answered_and_change_nothing(start: Factory) -> None:
    jiefen = await start()
    openid = "o_notices"
    await _fill(jiefen, openid, STEP["facts"])
    simulator = jiefen.simulator
    notices = [
        simulator.event(openid, "TEMPLATESENDJOBFINISH", {"MsgID": 1234, "Status": "success"}),
        simulator.event(openid, "LOCATION", {"Latitude": 25.04, "Longitude": 102.7}),
        simulator.view(openid, "https://example.org/menu"),
        simulator.event(openid, "pic_photo_or_album", {"EventKey": "evidence"}),
    ]
    for notice in notices:
        delivery = await jiefen.send(notice)
        assert delivery.status == 200 and isinstance(delivery.reply, NoReply), delivery
    # The intake waits at the same step, with nothing recorded for the notices.
    spoken = "隔壁养的狗每天半夜叫，说了好几次也不管，老人睡不好觉。"
    assert "请求" in await jiefen.say(openid, spoken)
    gate = jiefen.conversation_gate()
    sealer = PersonalDataProtector(load_or_create_data_key(jiefen.settings))
    entries = await gate.read_transcript(gate.keys(simulator.account_id, openid, "any"))
    assert len(entries) == STEP["facts"] + 1
    recorded = [
        line["c"]
        for entry in entries
        for line in json.loads(sealer.decrypt(entry.decode(), purpose=TRANSCRIPT_PURPOSE))
    ]
    assert not [text for text in recorded if "通知" in text or "事件" in text], recorded
    # A menu button, though, is the resident asking: it is answered.
    click = await jiefen.send(simulator.click(openid, "START"))
    assert isinstance(click.reply, Reply) and click.reply.content
    assert jiefen.fake.sent == []


async def test_a_resident_resumes_after_the_server_restarts(start: Factory) -> None:
    first = await start()
    openid = "o_resume"
    await _fill(first, openid, 6)
    # What lets the resident come back days later: the half-finished intake is kept for
    # JIEFEN_CONVERSATION_TTL_DAYS (7), from their last message.
    user = f"{first.settings.redis_prefix}user:gh_jiefen:{openid}:"
    week = first.settings.conversation_ttl_days * 24 * 3600
    assert week == 7 * 24 * 3600
    for kept in ("conversation", "transcript"):
        assert week - 60 < await first.services.redis.ttl(user + kept) <= week, kept
    second = await start()  # another process: state lives in Redis, not in the first one
    replies = [await second.say(openid, text) for text in SCRIPT[6:]]
    assert CASE_NO.search(replies[-1]), replies[-1]


async def test_asking_for_a_person_is_recorded(start: Factory) -> None:
    jiefen = await start()
    openid = "o_human"
    await _fill(jiefen, openid, 4)
    reply = await jiefen.say(openid, "人工")
    assert "联系" in reply

    async def callback_requests() -> list[Any]:
        async with jiefen.services.db.connect() as connection:
            query = sa.text("SELECT openid FROM callback_requests")
            return list((await connection.execute(query)).all())

    rows = await eventually(callback_requests)
    assert [row[0] for row in rows] == [openid]
