"""Global commands at every kind of step: 帮助 返回 取消 重新开始 人工 查询 修改 N."""

from __future__ import annotations

import datetime

import pytest

from cases.draft import EvidenceKind, LanguageNeed
from flows import texts
from flows.commands import Command, ParsedCommand, parse_command
from flows.conversation_state import Confirmation, ConversationState, Phase
from flows.effects import CreateCase, ListCases, RequestHuman
from flows.events import CasesListed, CaseSummary, Media
from flows.intake import INTAKE_FLOW
from tests.test_flows_helpers import ANSWERS, ITEM_KEYS, STEP_KEYS, Chat

SOME_STEPS = ["consent", "category", "applicant_id", "facts", "evidence", "language"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("帮助", ParsedCommand(Command.HELP)),
        (" 帮助。", ParsedCommand(Command.HELP)),
        ("「返回」", ParsedCommand(Command.BACK)),
        ("取消！", ParsedCommand(Command.CANCEL)),
        ("重新 开始", ParsedCommand(Command.RESTART)),
        ("人工", ParsedCommand(Command.HUMAN)),
        ("查询", ParsedCommand(Command.QUERY)),
        ("我要调解", ParsedCommand(Command.START)),
        ("确认", ParsedCommand(Command.CONFIRM)),
        ("修改", ParsedCommand(Command.EDIT)),
        ("修改 3", ParsedCommand(Command.EDIT, 3)),
        ("修改3", ParsedCommand(Command.EDIT, 3)),
        ("修改 第3项", ParsedCommand(Command.EDIT, 3)),
        ("修改第十二项", ParsedCommand(Command.EDIT, 12)),
        ("修改 １３", ParsedCommand(Command.EDIT, 13)),
        ("我想返回上一步看看", None),
        ("帮助我", None),
        ("1", None),
    ],
)
def test_parse_command(text: str, expected: ParsedCommand | None) -> None:
    assert parse_command(text) == expected


# --- 帮助 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", STEP_KEYS)
def test_help_explains_the_current_step(key: str) -> None:
    chat = Chat()
    chat.answer_until(key)
    before = chat.state
    reply = chat.send("帮助")
    step = INTAKE_FLOW.step(key)
    assert reply is not None and reply.startswith(step.help)
    assert texts.example_line(step.example) in reply and texts.COMMANDS in reply
    assert chat.state == before


def test_help_when_idle_and_at_summary() -> None:
    chat = Chat()
    assert chat.send("帮助") == texts.WELCOME
    chat.answer_until("summary")
    assert chat.send("帮助") == texts.REVIEW_HELP
    assert chat.at_summary


# --- 返回 --------------------------------------------------------------------------------------


def test_back_chain_walks_all_the_way_to_consent() -> None:
    chat = Chat()
    chat.answer_until("summary")
    visited = []
    for _ in STEP_KEYS:
        chat.send("返回")
        visited.append(chat.step)
    assert visited == list(reversed(STEP_KEYS))
    assert chat.step == "consent"
    assert (chat.send("返回") or "").startswith(texts.FIRST_STEP)
    assert chat.step == "consent"


def test_back_keeps_answers_and_shows_them() -> None:
    chat = Chat()
    chat.answer_until("applicant_id")
    reply = chat.send("返回")
    assert chat.step == "applicant_phone"
    assert reply is not None and texts.current_value("13800138000") in reply
    chat.send("13900139000")
    assert chat.step == "applicant_id"
    assert chat.state.answer("applicant_phone") == "13900139000"


def test_back_then_forward_reaches_the_summary_again() -> None:
    chat = Chat()
    chat.answer_until("summary")
    chat.send("返回")
    chat.send("返回")
    assert chat.step == "mode"
    chat.send("2")
    chat.send("普通话")
    assert chat.at_summary
    chat.send("确认")
    (effect,) = chat.effects
    assert isinstance(effect, CreateCase)
    assert effect.draft.language == LanguageNeed("普通话", False)


def test_back_when_idle() -> None:
    chat = Chat()
    assert (chat.send("返回") or "").startswith(texts.NOTHING_TO_GO_BACK)
    assert chat.state == ConversationState.initial()


# --- 取消 / 重新开始 ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [*SOME_STEPS, "summary"])
def test_cancel_confirmed_clears_everything(key: str) -> None:
    chat = Chat()
    chat.answer_until(key)
    assert chat.send("取消") == texts.CONFIRM_CANCEL
    assert chat.state.confirming is Confirmation.CANCEL
    assert chat.send("是") == texts.CANCELLED
    assert chat.state == ConversationState.initial()


@pytest.mark.parametrize("key", [*SOME_STEPS, "summary"])
def test_cancel_declined_goes_on_where_it_was(key: str) -> None:
    chat = Chat()
    chat.answer_until(key)
    before = chat.state
    chat.send("取消")
    reply = chat.send("否")
    assert reply is not None and reply.startswith(texts.CONTINUE)
    assert chat.state.confirming is None
    assert (chat.state.phase, chat.step, chat.state.answers) == (
        before.phase,
        before.step,
        before.answers,
    )


def test_cancel_confirmation_needs_a_clear_answer() -> None:
    chat = Chat()
    chat.answer_until("claim")
    chat.send("取消")
    reply = chat.send("修好漏水")
    assert reply is not None and reply.startswith(texts.YES_NO_INVALID)
    assert chat.state.confirming is Confirmation.CANCEL
    assert chat.send("取消") == texts.CANCELLED  # saying it again means yes


def test_restart_confirmed_starts_again_at_consent() -> None:
    chat = Chat()
    chat.answer_until("amount")
    chat.send(Media("img", EvidenceKind.IMAGE))
    assert chat.send("重新开始") == texts.CONFIRM_RESTART
    reply = chat.send("确定")
    assert reply is not None and reply.startswith(texts.RESTARTED)
    assert chat.step == "consent"
    assert chat.state.answers == () and chat.state.evidence == () and chat.state.history == ()


def test_restart_declined_and_restart_when_idle() -> None:
    chat = Chat()
    chat.answer_until("facts")
    chat.send("重新开始")
    chat.send("不")
    assert chat.step == "facts" and chat.state.has_answer("place")
    idle = Chat()
    idle.send("重新开始")
    assert idle.step == "consent" and idle.state.confirming is None


def test_cancel_when_idle() -> None:
    chat = Chat()
    assert (chat.send("取消") or "").startswith(texts.NOTHING_TO_CANCEL)


# --- 人工 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", SOME_STEPS)
def test_human_records_a_callback_and_lets_them_go_on(key: str) -> None:
    chat = Chat()
    chat.answer_until(key)
    before = chat.state
    reply = chat.send("人工")
    (request,) = chat.effects_of(RequestHuman)
    assert isinstance(request, RequestHuman) and request.step == key
    assert reply is not None and reply.startswith(texts.HUMAN_REQUESTED) and "工作时间" in reply
    assert INTAKE_FLOW.step(key).prompt in reply
    assert chat.step == before.step and chat.state.answers == before.answers
    if STEP_KEYS.index(key) > STEP_KEYS.index("applicant_phone"):
        assert "13800138000" in request.note
    else:
        assert "手机号" not in request.note


def test_human_note_mentions_the_strikes() -> None:
    chat = Chat()
    chat.answer_until("applicant_id")
    for _ in range(3):
        chat.send("123")
    chat.send("人工")
    (request,) = chat.effects_of(RequestHuman)
    assert (
        isinstance(request, RequestHuman) and "3次" in request.note and "身份证号" in request.note
    )


def test_human_when_idle_and_at_summary() -> None:
    chat = Chat()
    assert chat.send("人工") == texts.HUMAN_REQUESTED
    assert chat.effects_of(RequestHuman) == [
        RequestHuman(None, texts.human_note("未在填写申请", None, 0))
    ]
    chat.answer_until("summary")
    chat.send("人工")
    (request,) = chat.effects_of(RequestHuman)
    assert isinstance(request, RequestHuman) and request.step == "summary"
    assert chat.at_summary


# --- 查询 --------------------------------------------------------------------------------------

CASES = (
    CaseSummary(
        "JF20261121-0001", "邻里纠纷", "调解员已接收，正在联系对方", datetime.date(2026, 11, 21)
    ),
    CaseSummary("JF20261002-0007", "物业纠纷", "已调解成功", datetime.date(2026, 10, 2)),
)


def test_query_lists_cases_in_plain_words() -> None:
    chat = Chat()
    assert chat.send("查询") is None
    assert chat.effects == (ListCases(),)
    reply = chat.send(CasesListed(CASES))
    assert reply is not None
    assert (
        "JF20261121-0001" in reply and "调解员已接收，正在联系对方" in reply and "11月21日" in reply
    )
    assert "JF20261002-0007" in reply and "已调解成功" in reply
    assert chat.state == ConversationState.initial()


def test_query_with_no_cases_says_how_to_start() -> None:
    chat = Chat()
    chat.send("查询")
    assert chat.send(CasesListed(())) == texts.NO_CASES


def test_query_mid_intake_keeps_the_place() -> None:
    chat = Chat()
    chat.answer_until("claim")
    before = chat.state
    chat.send("查询")
    reply = chat.send(CasesListed(CASES))
    assert reply is not None and texts.RESUME_FILING in reply and texts.CLAIM_PROMPT in reply
    assert chat.state.step == before.step and chat.state.answers == before.answers
    summary_chat = Chat()
    summary_chat.answer_until("summary")
    summary_chat.send("查询")
    assert texts.RESUME_REVIEW in (summary_chat.send(CasesListed(())) or "")


def test_long_case_lists_are_cut() -> None:
    chat = Chat()
    chat.send("查询")
    many = tuple(
        CaseSummary(f"JF20260101-{n:04d}", "其他", "已结案", datetime.date(2026, 1, 1))
        for n in range(25)
    )
    reply = chat.send(CasesListed(many))
    assert reply is not None and texts.more_cases(15) in reply and "JF20260101-0010" not in reply


# --- start words while filing -------------------------------------------------------------------


@pytest.mark.parametrize("key", ["category", "facts", "summary"])
def test_start_while_filing_says_so_and_asks_again(key: str) -> None:
    chat = Chat()
    chat.answer_until(key)
    before = chat.state
    reply = chat.send("我要调解")
    assert reply is not None and reply.startswith(texts.ALREADY_FILING)
    assert chat.state.step == before.step and chat.state.phase is before.phase


# --- 修改 --------------------------------------------------------------------------------------

NEW_VALUES = {
    "category": ("5", "借贷/合同"),
    "applicant_name": ("王小明", "王小明"),
    "applicant_phone": ("13700137000", "13700137000"),
    "applicant_id": ("11010519491231002X", "1101**********002X"),
    "respondent_name": ("李四", "李四"),
    "respondent_phone": ("不知道", "不知道"),
    "place": ("官渡区关上街道", "官渡区关上街道"),
    "facts": ("去年借给对方两万元，到期一直不还。", "去年借给对方两万元"),
    "claim": ("还钱", "还钱"),
    "amount": ("两万", "20000元"),
    "evidence": ("完成", "无"),
    "mode": ("2", "到场调解"),
    "language": ("普通话", "普通话"),
}


@pytest.mark.parametrize(("number", "key"), list(enumerate(ITEM_KEYS, 1)))
def test_edit_each_item_returns_to_the_summary(number: int, key: str) -> None:
    chat = Chat()
    chat.answer_until("summary")
    reply = chat.send(f"修改 {number}")
    assert chat.step == key and chat.state.editing
    label = INTAKE_FLOW.step(key).label
    assert reply is not None and reply.startswith(texts.editing_item(number, label or ""))
    new_text, shown = NEW_VALUES[key]
    reply = chat.send(new_text)
    assert chat.at_summary and not chat.state.editing
    assert reply is not None and texts.EDITED in reply
    assert f"{number}. {label}：{shown}" in reply


def test_edit_forms_and_item_choice_after_bare_edit() -> None:
    chat = Chat()
    chat.answer_until("summary")
    assert chat.send("修改") == texts.ASK_WHICH_ITEM
    chat.send("3")
    assert chat.step == "applicant_phone"
    chat.send("返回")
    assert chat.at_summary
    chat.send("修改第四项")
    assert chat.step == "applicant_id"
    chat.send("修改 9")  # changing mind while editing
    assert chat.step == "claim" and chat.state.editing
    assert chat.send("修改 14") == texts.no_such_item(14, 13)
    assert chat.send("修改0") == texts.no_such_item(0, 13)


def test_edit_with_invalid_answer_stays_until_valid() -> None:
    chat = Chat()
    chat.answer_until("summary")
    chat.send("修改 4")
    reply = chat.send("11010519491231002")
    assert reply is not None and reply.startswith(texts.id_wrong_length(17))
    assert chat.step == "applicant_id" and chat.state.editing
    chat.send("11010519491231002X")
    assert chat.at_summary


def test_edit_evidence_adds_more_then_back_to_summary() -> None:
    chat = Chat()
    chat.answer_until("summary")
    reply = chat.send("修改 11")
    assert reply is not None and texts.evidence_so_far(0) in reply
    chat.send(Media("img-1", EvidenceKind.IMAGE))
    reply = chat.send("完成")
    assert chat.at_summary and reply is not None and "11. 证据材料：1份" in reply


def test_edit_before_the_summary_points_to_back() -> None:
    chat = Chat()
    chat.answer_until("facts")
    reply = chat.send("修改 2")
    assert reply is not None and reply.startswith(texts.EDIT_ONLY_AT_SUMMARY)
    assert chat.step == "facts"
    assert (Chat().send("修改") or "").startswith(texts.NOTHING_TO_EDIT)


def test_confirm_is_an_ordinary_answer_before_the_summary() -> None:
    chat = Chat()
    chat.answer_until("claim")
    chat.send("确认")
    assert chat.state.answer("claim") == "确认"
    assert chat.state.phase is Phase.COLLECTING


def test_unclear_reply_at_summary_reprompts_and_offers_human() -> None:
    chat = Chat()
    chat.answer_until("summary")
    assert chat.send("嗯嗯") == texts.REVIEW_INVALID
    chat.send("嗯嗯")
    assert texts.OFFER_HUMAN in (chat.send("嗯嗯") or "")
    reply = chat.send(Media("late", EvidenceKind.FILE))
    assert reply is not None and reply.startswith(texts.media_kept_early(1))
    assert chat.at_summary


def test_every_answer_is_kept_with_its_key() -> None:
    chat = Chat()
    chat.answer_until("summary")
    kept = [key for key, _ in chat.state.answers]
    assert kept == [key for key in ANSWERS if key != "evidence"]  # evidence is kept apart
