"""A resident chatting with the pure intake engine, for the flows tests (no I/O anywhere).

:class:`Chat` feeds events to :func:`flows.engine.advance` and checks, on every turn, the
contracts every advance must keep: at most one Reply, a Reply for every message from the
resident (bar the documented exceptions), replies within WeChat's text limit, and a state that
survives ``to_dict`` → JSON → ``from_dict`` unchanged.
"""

from __future__ import annotations

import datetime
import json

from cases.draft import EvidenceKind
from cases.id_number import id_check_code
from flows.conversation_state import ConversationState, Phase
from flows.effects import CreateCase, Effect, FetchMedia, ListCases, Reply, RequestHuman
from flows.engine import advance
from flows.events import (
    CaseCreated,
    CaseCreationFailed,
    CasesListed,
    Event,
    Media,
    Text,
    Unsubscribe,
)
from flows.intake import INTAKE_FLOW

NOW = datetime.datetime(2026, 11, 21, 9, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=8)))
WECHAT_TEXT_LIMIT_BYTES = 2048


def valid_id(first17: str = "53010219900307123") -> str:
    """An ID number with the right GB 11643 check character."""
    return first17 + id_check_code(first17)


ID_NUMBER = valid_id()  # 530102199003071238 → masked 5301**********1238

#: One valid answer per step, in flow order (consent first).
ANSWERS: dict[str, str] = {
    "consent": "同意",
    "category": "1",
    "applicant_name": "阿依·木呷",
    "applicant_phone": "+86 138-0013-8000",
    "applicant_id": ID_NUMBER.lower(),
    "respondent_name": "昆明某某物业服务有限公司",
    "respondent_phone": "139 0013 9000",
    "place": "五华区华山街道翠湖社区",
    "facts": "楼上邻居家卫生间漏水三个月，我家天花板发霉，找过对方几次都没解决。",
    "claim": "修好漏水，赔偿维修费",
    "amount": "三千五百元",
    "evidence": "完成",
    "mode": "1",
    "language": "彝语，需要翻译",
}
STEP_KEYS = list(ANSWERS)
ITEM_KEYS = STEP_KEYS[1:]  # numbered 1..13 in the summary


class Chat:
    """One resident's conversation with the engine."""

    def __init__(self, now: datetime.datetime = NOW) -> None:
        self.state = ConversationState.initial()
        self.now = now
        self.effects: tuple[Effect, ...] = ()

    def send(self, event: Event | str) -> str | None:
        """Send a message (a ``str`` is a Text) and return the reply text, if any."""
        if isinstance(event, str):
            event = Text(event)
        was_reviewing = self.state.phase in (Phase.REVIEWING, Phase.SUBMITTING)
        self.state, self.effects = advance(INTAKE_FLOW, self.state, event, self.now)
        replies = [e for e in self.effects if isinstance(e, Reply)]
        assert len(replies) <= 1, self.effects
        waits_for_feedback = any(isinstance(e, CreateCase | ListCases) for e in self.effects)
        is_feedback = isinstance(event, CaseCreated | CaseCreationFailed | CasesListed)
        if not (isinstance(event, Unsubscribe) or waits_for_feedback or is_feedback):
            assert replies, f"no reply to {event!r}"
        if replies:
            assert self.effects[-1] is replies[0], "the reply comes after the other effects"
            limit = WECHAT_TEXT_LIMIT_BYTES if was_reviewing or self.at_summary else 600 * 3
            assert len(replies[0].text.encode()) < limit, replies[0].text
        stored = json.loads(json.dumps(self.state.to_dict(), ensure_ascii=False))
        assert ConversationState.from_dict(stored) == self.state
        return replies[0].text if replies else None

    def answer_until(self, key: str) -> None:
        """Start filing and answer every step before ``key`` (``"summary"`` for all of them)."""
        self.send("我要调解")
        for step in STEP_KEYS:
            if step == key:
                return
            self.send(ANSWERS[step])
        assert key == "summary" and self.state.phase is Phase.REVIEWING

    @property
    def at_summary(self) -> bool:
        return self.state.phase is Phase.REVIEWING

    @property
    def step(self) -> str | None:
        return self.state.step

    def effects_of(self, kind: type[Effect]) -> list[Effect]:
        return [e for e in self.effects if isinstance(e, kind)]


def created(case_no: str = "JF20261121-0001", phone: str | None = "0871-65123456") -> CaseCreated:
    return CaseCreated(case_no, "五华区华山街道人民调解委员会", phone, datetime.date(2026, 11, 25))


def test_chat_helper_round_trips_state_on_every_turn() -> None:
    chat = Chat()
    chat.answer_until("summary")
    assert chat.state.phase is Phase.REVIEWING
    assert len(chat.state.answers) == len(STEP_KEYS) - 1  # evidence is kept apart


def test_chat_helper_counts_effects() -> None:
    chat = Chat()
    chat.answer_until("evidence")
    chat.send(Media("img-1", EvidenceKind.IMAGE))
    assert chat.effects_of(FetchMedia) == [FetchMedia("img-1", EvidenceKind.IMAGE)]
    assert chat.effects_of(RequestHuman) == []
