"""The intake engine driven step by step: the happy path, every re-prompt, voice, evidence,
locations, submission feedback and coming back after a while. Pure: no I/O anywhere."""

from __future__ import annotations

import datetime
from decimal import Decimal

import pytest

from cases.draft import (
    CaseDraft,
    Category,
    EvidenceItem,
    EvidenceKind,
    LanguageNeed,
    MediationMode,
    Place,
)
from flows import texts
from flows.conversation_state import ConversationState, Phase
from flows.effects import CreateCase, FetchMedia, Reply
from flows.engine import advance
from flows.events import (
    CaseCreationFailed,
    Location,
    Media,
    Notice,
    Subscribe,
    Text,
    Unsubscribe,
    Unsupported,
    Voice,
)
from flows.intake import INTAKE_FLOW
from tests.test_flows_helpers import ANSWERS, ID_NUMBER, NOW, STEP_KEYS, Chat, created

EXPECTED_DRAFT = CaseDraft(
    category=Category.NEIGHBOUR,
    applicant_name="阿依·木呷",
    applicant_phone="13800138000",
    applicant_id_number=ID_NUMBER,
    respondent_name="昆明某某物业服务有限公司",
    respondent_phone="13900139000",
    place=Place("五华区华山街道翠湖社区"),
    facts=ANSWERS["facts"],
    claim="修好漏水，赔偿维修费",
    amount_yuan=Decimal(3500),
    mode=MediationMode.VIDEO,
    language=LanguageNeed("彝语", needs_interpreter=True),
)


def submitted_draft(chat: Chat) -> CaseDraft:
    (effect,) = chat.effects
    assert isinstance(effect, CreateCase)
    return effect.draft


def test_welcome_on_subscribe() -> None:
    chat = Chat()
    reply = chat.send(Subscribe())
    assert reply == texts.WELCOME
    assert "免费" in reply and "自愿" in reply and "「1」" in reply and "「我要调解」" in reply
    for command in ("帮助", "返回", "取消", "重新开始", "人工", "查询"):
        assert f"「{command}」" in reply
    assert chat.state == ConversationState.initial()


@pytest.mark.parametrize("start", ["1", "我要调解", "调解", " 我要调解！"])
def test_start_words_begin_with_consent(start: str) -> None:
    chat = Chat()
    reply = chat.send(start)
    assert chat.step == "consent"
    assert reply is not None and "录音录像" in reply and "身份证号" in reply and "同意" in reply


def test_idle_unknown_text_gets_the_hint() -> None:
    chat = Chat()
    assert chat.send("你好") == texts.IDLE_HINT
    assert chat.send(Media("m", EvidenceKind.IMAGE)) == texts.IDLE_HINT
    assert chat.effects_of(FetchMedia) == []
    assert chat.state == ConversationState.initial()


def test_happy_path_builds_the_full_draft() -> None:
    chat = Chat()
    replies = {}
    chat.send("我要调解")
    for key in STEP_KEYS:
        replies[key] = chat.send(ANSWERS[key])
    assert chat.at_summary
    summary = replies["language"]
    assert summary is not None
    for number, line in enumerate(
        [
            "纠纷类型：邻里纠纷",
            "您的姓名：阿依·木呷",
            "您的手机号：13800138000",
            "身份证号：5301**********1238",
            "对方：昆明某某物业服务有限公司",
            "对方电话：13900139000",
            "地点：五华区华山街道翠湖社区",
            "事情经过：楼上邻居家",
            "您的请求：修好漏水，赔偿维修费",
            "涉及金额：3500元",
            "证据材料：无",
            "调解方式：视频调解",
            "语言：彝语（需要翻译）",
        ],
        1,
    ):
        assert f"{number}. {line}" in summary
    assert ID_NUMBER not in summary
    assert "5301**********1238" in (replies["applicant_id"] or "")
    assert chat.send("确认") is None  # the edge's feedback gets the reply
    assert chat.state.phase is Phase.SUBMITTING
    assert submitted_draft(chat) == EXPECTED_DRAFT


def test_each_question_has_progress_and_an_example() -> None:
    chat = Chat()
    chat.send("1")
    for number, key in enumerate(STEP_KEYS[:-1]):
        reply = chat.send(ANSWERS[key])
        assert reply is not None
        assert texts.progress(number + 1, 13) in reply
        assert "例如：" in reply


def test_case_created_tells_number_org_deadline_and_resets() -> None:
    chat = Chat()
    chat.answer_until("summary")
    chat.send("确认")
    reply = chat.send(created())
    assert reply is not None
    assert "JF20261121-0001" in reply
    assert "五华区华山街道人民调解委员会" in reply and "0871-65123456" in reply
    assert "11月25日" in reply and "「查询」" in reply
    assert chat.state == ConversationState.initial()


def test_case_created_without_org_phone() -> None:
    chat = Chat()
    chat.answer_until("summary")
    chat.send("确认")
    reply = chat.send(created(phone=None))
    assert reply is not None and "电话" not in reply.split("受理组织")[1].split("\n")[0]


def test_creation_failure_keeps_everything_and_confirm_again_works() -> None:
    chat = Chat()
    chat.answer_until("summary")
    chat.send(Media("img-1", EvidenceKind.IMAGE))
    chat.send("确认")
    before = submitted_draft(chat)
    assert chat.send(CaseCreationFailed()) == texts.SUBMIT_FAILED
    assert chat.at_summary
    chat.send("确认")
    assert submitted_draft(chat) == before
    assert before.evidence == (EvidenceItem("img-1", EvidenceKind.IMAGE),)
    chat.send(created())
    assert chat.state == ConversationState.initial()


def test_stray_feedback_does_not_touch_an_intake_in_progress() -> None:
    chat = Chat()
    chat.answer_until("claim")
    state = chat.state
    assert chat.send(CaseCreationFailed()) is None
    assert chat.state == state
    reply = chat.send(created())
    assert reply is not None and "JF20261121-0001" in reply
    assert chat.state == state


def test_message_while_submitting_says_wait_and_confirm_resubmits() -> None:
    chat = Chat()
    chat.answer_until("summary")
    chat.send("确认")
    assert chat.send("好了吗") == texts.SUBMITTING
    assert chat.send("修改 1") == texts.SUBMITTING
    chat.send("确认")
    assert submitted_draft(chat) == EXPECTED_DRAFT


# --- invalid answers at every step ------------------------------------------------------------

INVALID: dict[str, tuple[str, str]] = {
    "consent": ("好啊", texts.CONSENT_INVALID),
    "category": ("9", texts.CATEGORY_INVALID),
    "applicant_name": ("张3", texts.NAME_HAS_DIGITS),
    "applicant_phone": ("1380013800", texts.phone_wrong_length(10)),
    "applicant_id": ("53010219900230123X", texts.ID_BAD_BIRTH_DATE),
    "respondent_name": ("123", texts.PARTY_BAD_CHARS),
    "respondent_phone": ("12345", texts.phone_wrong_length(5)),
    "place": ("区", texts.text_too_short(2)),
    "facts": ("漏水", texts.text_too_short(10)),
    "claim": ("赔", texts.text_too_short(2)),
    "amount": ("很多", texts.AMOUNT_INVALID),
    "evidence": ("照片在手机里", texts.EVIDENCE_INVALID),
    "mode": ("3", texts.MODE_INVALID),
    "language": ("4", texts.LANGUAGE_OTHER),
}


@pytest.mark.parametrize("key", STEP_KEYS)
def test_invalid_answer_gets_a_specific_reprompt(key: str) -> None:
    chat = Chat()
    chat.answer_until(key)
    text, message = INVALID[key]
    reply = chat.send(text)
    assert reply is not None
    assert reply.startswith(message)
    assert texts.example_line(INTAKE_FLOW.step(key).example) in reply
    assert texts.OFFER_HUMAN not in reply
    assert chat.step == key and chat.state.invalid_count == 1
    chat.send(ANSWERS[key])
    assert chat.step != key and chat.state.invalid_count == 0


@pytest.mark.parametrize("key", ["category", "applicant_id", "facts", "evidence"])
def test_third_invalid_answer_offers_human(key: str) -> None:
    chat = Chat()
    chat.answer_until(key)
    text, _ = INVALID[key]
    assert texts.OFFER_HUMAN not in (chat.send(text) or "")
    assert texts.OFFER_HUMAN not in (chat.send(text) or "")
    assert texts.OFFER_HUMAN in (chat.send(text) or "")
    assert texts.OFFER_HUMAN in (chat.send(text) or "")
    assert chat.state.invalid_count == 4
    chat.send(ANSWERS[key])  # the next question starts afresh
    assert chat.state.invalid_count == 0
    assert texts.OFFER_HUMAN not in (chat.send("？？") or "")


def test_strikes_count_per_question_and_reset_on_back() -> None:
    chat = Chat()
    chat.answer_until("applicant_phone")
    chat.send("1")
    chat.send("2")
    chat.send("返回")
    assert chat.step == "applicant_name" and chat.state.invalid_count == 0


def test_declining_consent_ends_politely_and_keeps_nothing() -> None:
    chat = Chat()
    chat.send("1")
    assert chat.send("不同意") == texts.DECLINED
    assert chat.state == ConversationState.initial()
    assert [type(e) for e in chat.effects] == [Reply]


def test_nothing_is_kept_before_consent() -> None:
    chat = Chat()
    chat.send("1")
    reply = chat.send(Media("img", EvidenceKind.IMAGE))
    assert reply is not None and reply.startswith(texts.TEXT_EXPECTED)
    assert chat.effects_of(FetchMedia) == [] and chat.state.evidence == ()


# --- voice, media, location, unsupported --------------------------------------------------


def test_voice_with_recognition_answers_facts_and_is_kept() -> None:
    chat = Chat()
    chat.answer_until("facts")
    reply = chat.send(Voice("voice-1", "楼上漏水三个月了，找了物业也没人管。"))
    assert reply is not None and reply.startswith(texts.FACTS_VOICE_ACK)
    assert chat.effects_of(FetchMedia) == [FetchMedia("voice-1", EvidenceKind.VOICE)]
    assert chat.step == "claim"
    for key in STEP_KEYS[STEP_KEYS.index("claim") :]:
        chat.send(ANSWERS[key])
    chat.send("确认")
    draft = submitted_draft(chat)
    assert draft.facts == "楼上漏水三个月了，找了物业也没人管。"
    assert draft.facts_voice_media_id == "voice-1"
    assert draft.evidence == ()


@pytest.mark.parametrize("recognition", [None, "", "   "])
def test_voice_without_recognition_is_kept_and_asks_for_text(recognition: str | None) -> None:
    chat = Chat()
    chat.answer_until("facts")
    reply = chat.send(Voice("voice-1", recognition))
    assert reply is not None and reply.startswith(texts.FACTS_VOICE_KEPT)
    assert chat.effects_of(FetchMedia) == [FetchMedia("voice-1", EvidenceKind.VOICE)]
    assert chat.step == "facts" and chat.state.invalid_count == 0
    chat.send(Voice("voice-2"))  # a second voice: the first stays as evidence
    chat.send("楼上漏水三个月，一直没人修。")
    assert chat.step == "claim"
    for key in STEP_KEYS[STEP_KEYS.index("claim") :]:
        chat.send(ANSWERS[key])
    chat.send("确认")
    draft = submitted_draft(chat)
    assert draft.facts == "楼上漏水三个月，一直没人修。"
    assert draft.facts_voice_media_id == "voice-2"
    assert draft.evidence == (EvidenceItem("voice-1", EvidenceKind.VOICE),)


def test_voice_with_too_short_recognition_keeps_media_and_stays() -> None:
    chat = Chat()
    chat.answer_until("facts")
    reply = chat.send(Voice("voice-1", "漏水"))
    assert reply is not None and reply.startswith(texts.FACTS_VOICE_TOO_SHORT)
    assert chat.step == "facts" and chat.state.answer("facts_voice") == "voice-1"


def test_recognised_voice_answers_any_text_step() -> None:
    chat = Chat()
    chat.answer_until("applicant_name")
    chat.send(Voice("v", "张三。"))
    assert chat.state.answer("applicant_name") == "张三"
    assert chat.effects_of(FetchMedia) == []
    chat.send(Voice("v2", "返回"))  # commands by voice too
    assert chat.step == "applicant_name"


def test_unrecognised_voice_at_a_text_step_is_a_gentle_reprompt() -> None:
    chat = Chat()
    chat.answer_until("claim")
    reply = chat.send(Voice("v"))
    assert reply is not None and reply.startswith(texts.VOICE_NOT_RECOGNISED)
    assert texts.CLAIM_PROMPT in reply
    assert chat.step == "claim" and chat.state.invalid_count == 0


def test_evidence_counts_every_item_and_fetches_it() -> None:
    chat = Chat()
    chat.answer_until("evidence")
    assert chat.send(Media("img-1", EvidenceKind.IMAGE)) == texts.evidence_received(1)
    assert chat.effects_of(FetchMedia) == [FetchMedia("img-1", EvidenceKind.IMAGE)]
    assert chat.send(Voice("voice-1", "这是对方说的话")) == texts.evidence_received(2)
    assert chat.effects_of(FetchMedia) == [FetchMedia("voice-1", EvidenceKind.VOICE)]
    assert chat.send(Media("vid-1", EvidenceKind.VIDEO)) == texts.evidence_received(3)
    assert chat.send(Media("file-1", EvidenceKind.FILE, "借条.pdf")) == texts.evidence_received(4)
    assert chat.send(Media("img-1", EvidenceKind.IMAGE)) == texts.evidence_received(4)  # repeat
    assert chat.effects_of(FetchMedia) == []
    chat.send(Voice("voice-2", "完成。"))  # «完成» said aloud finishes the step
    assert chat.step == "mode"
    chat.send(ANSWERS["mode"])
    assert "11. 证据材料：4份" in (chat.send(ANSWERS["language"]) or "")
    chat.send("确认")
    assert submitted_draft(chat).evidence == (
        EvidenceItem("img-1", EvidenceKind.IMAGE),
        EvidenceItem("voice-1", EvidenceKind.VOICE),
        EvidenceItem("vid-1", EvidenceKind.VIDEO),
        EvidenceItem("file-1", EvidenceKind.FILE, "借条.pdf"),
    )


@pytest.mark.parametrize("word", ["跳过", "没有", "完成"])
def test_evidence_can_be_skipped(word: str) -> None:
    chat = Chat()
    chat.answer_until("evidence")
    chat.send(word)
    assert chat.step == "mode" and chat.state.evidence == ()


def test_evidence_is_bounded() -> None:
    chat = Chat()
    chat.answer_until("evidence")
    for n in range(INTAKE_FLOW.evidence_limit):
        chat.send(Media(f"m{n}", EvidenceKind.IMAGE))
    assert chat.send(Media("one-too-many", EvidenceKind.IMAGE)) == texts.evidence_full(50)
    assert chat.effects_of(FetchMedia) == [] and len(chat.state.evidence) == 50


def test_media_at_a_text_step_is_kept_and_the_question_asked_again() -> None:
    chat = Chat()
    chat.answer_until("claim")
    reply = chat.send(Media("img-early", EvidenceKind.IMAGE))
    assert reply is not None and reply.startswith(texts.media_kept_early(1))
    assert texts.CLAIM_PROMPT in reply
    assert chat.effects_of(FetchMedia) == [FetchMedia("img-early", EvidenceKind.IMAGE)]
    assert chat.step == "claim" and chat.state.invalid_count == 0
    chat.send(ANSWERS["claim"])
    assert texts.evidence_so_far(1) in (chat.send(ANSWERS["amount"]) or "")


def test_location_answers_the_place_step() -> None:
    chat = Chat()
    chat.answer_until("place")
    reply = chat.send(Location("云南省昆明市五华区华山街道", 25.04, 102.70))
    assert reply is not None and reply.startswith(
        texts.place_from_location("云南省昆明市五华区华山街道")
    )
    assert chat.state.answer("place") == Place("云南省昆明市五华区华山街道", 25.04, 102.70)
    assert chat.step == "facts"


def test_location_without_label_uses_coordinates() -> None:
    chat = Chat()
    chat.answer_until("place")
    chat.send(Location("", 25.04, 102.7))
    place = chat.state.answer("place")
    assert isinstance(place, Place) and place.text == texts.location_fallback(25.04, 102.7)


def test_location_elsewhere_and_unsupported_are_gentle_reprompts() -> None:
    chat = Chat()
    chat.answer_until("claim")
    reply = chat.send(Location("某地", 1.0, 2.0))
    assert reply is not None and reply.startswith(texts.LOCATION_NOT_HERE)
    reply = chat.send(Unsupported("link"))
    assert reply is not None and reply.startswith(texts.UNSUPPORTED)
    assert texts.CLAIM_PROMPT in reply
    assert chat.step == "claim" and chat.state.invalid_count == 0


def test_a_notice_changes_nothing_and_gets_no_reply() -> None:
    chat = Chat()
    chat.answer_until("claim")
    before = chat.state
    state, effects = advance(INTAKE_FLOW, before, Notice("event:templatesendjobfinish"), NOW)
    assert state is before and effects == ()


# --- coming back ------------------------------------------------------------------------------


def test_welcome_back_after_a_gap_with_a_valid_answer() -> None:
    chat = Chat()
    chat.answer_until("claim")
    chat.now = NOW + datetime.timedelta(days=3)
    reply = chat.send(ANSWERS["claim"])
    assert reply is not None and reply.startswith(texts.WELCOME_BACK)
    assert chat.step == "amount"
    assert chat.state.last_active == chat.now


def test_welcome_back_reasks_instead_of_scolding() -> None:
    chat = Chat()
    chat.answer_until("applicant_phone")
    chat.now = NOW + datetime.timedelta(hours=2)
    reply = chat.send("我回来了")
    assert reply is not None and reply.startswith(texts.WELCOME_BACK)
    assert texts.APPLICANT_PHONE_PROMPT in reply
    assert texts.PHONE_NOT_DIGITS not in reply
    assert chat.state.invalid_count == 0
    reply = chat.send("我回来了")  # no longer a return: now it is an ordinary mistake
    assert reply is not None and reply.startswith(texts.PHONE_NOT_DIGITS)


def test_welcome_back_at_summary_shows_the_summary() -> None:
    chat = Chat()
    chat.answer_until("summary")
    chat.now = NOW + datetime.timedelta(days=6)
    reply = chat.send("在吗")
    assert reply is not None and reply.startswith(texts.WELCOME_BACK)
    assert texts.SUMMARY_TITLE in reply


def test_no_welcome_back_within_the_hour_or_when_idle() -> None:
    chat = Chat()
    chat.answer_until("claim")
    chat.now = NOW + datetime.timedelta(minutes=59)
    assert not (chat.send(ANSWERS["claim"]) or "").startswith(texts.WELCOME_BACK)
    idle = Chat()
    idle.send("你好")
    idle.now = NOW + datetime.timedelta(days=2)
    assert idle.send("你好") == texts.IDLE_HINT


def test_naive_and_aware_clocks_do_not_crash() -> None:
    chat = Chat()
    chat.answer_until("claim")
    chat.now = datetime.datetime(2026, 11, 25, 9, 0)  # naive
    assert not (chat.send(ANSWERS["claim"]) or "").startswith(texts.WELCOME_BACK)


def test_unsubscribe_forgets_the_half_filed_intake_silently() -> None:
    chat = Chat()
    chat.answer_until("claim")
    assert chat.send(Unsubscribe()) is None
    assert chat.effects == () and chat.state == ConversationState.initial()


def test_subscribe_while_filing_resumes() -> None:
    chat = Chat()
    chat.answer_until("claim")
    reply = chat.send(Subscribe())
    assert reply is not None and reply.startswith(texts.ALREADY_FILING)
    assert texts.CLAIM_PROMPT in reply


def test_state_from_another_flow_version_starts_afresh() -> None:
    state = ConversationState(phase=Phase.COLLECTING, step="renamed_step")
    new, effects = advance(INTAKE_FLOW, state, Text("你好"), NOW)
    assert new == ConversationState.initial()
    assert effects == (Reply(texts.IDLE_HINT),)


def test_summary_stays_within_wechat_limit_with_longest_answers() -> None:
    chat = Chat()
    chat.send("1")
    longest = {
        "respondent_name": "某" * 60,
        "place": "地" * 100,
        "facts": "事" * 2000,
        "claim": "求" * 500,
        "amount": "9999999999.99",
        "language": "一种名字非常长的少数民族语言名称测试",
    }
    for key in STEP_KEYS:
        summary = chat.send(longest.get(key, ANSWERS[key]))
    assert chat.at_summary
    assert summary is not None and "…" in summary
    assert len(summary.encode()) < 2000
    chat.send("确认")
    assert len(submitted_draft(chat).facts) == 2000  # clipped in the summary only


def test_the_transcript_masks_whatever_is_typed_at_the_id_step_but_commands() -> None:
    at_id = ConversationState(phase=Phase.COLLECTING, step="applicant_id")
    at_name = ConversationState(phase=Phase.COLLECTING, step="applicant_name")
    transcript = INTAKE_FLOW.transcript_text
    assert transcript(at_id, "530102199003076081") == "5301**********6081"  # checksum wrong
    assert transcript(at_id, "5301 0219 9003") == "5301****9003"
    assert transcript(at_id, "帮助") == "帮助"
    assert transcript(at_id, "修改 3") == "修改 3"
    assert transcript(at_name, "张三丰") == "张三丰"
    assert transcript(ConversationState.initial(), "我要调解") == "我要调解"
