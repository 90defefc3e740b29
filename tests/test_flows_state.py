"""ConversationState: its lifecycle rules and its storage form (to_dict / from_dict)."""

from __future__ import annotations

import datetime
import json
from decimal import Decimal
from typing import Any

import pytest

from cases.draft import (
    Category,
    EvidenceItem,
    EvidenceKind,
    LanguageNeed,
    MediationMode,
    Place,
)
from flows.conversation_state import SCHEMA_VERSION, Confirmation, ConversationState, Phase
from jiefen.errors import InvalidTransition
from tests.test_flows_helpers import NOW, Chat

FULL = ConversationState(
    phase=Phase.COLLECTING,
    step="language",
    history=("consent", "category", "mode"),
    answers=(
        ("consent", True),
        ("category", Category.FAMILY),
        ("applicant_name", "阿依·木呷"),
        ("respondent_phone", None),
        ("place", Place("五华区", 25.04, 102.7)),
        ("plain_place", Place("官渡区")),
        ("amount", Decimal("1280.50")),
        ("mode", MediationMode.IN_PERSON),
        ("language", LanguageNeed("彝语", True)),
    ),
    evidence=(
        EvidenceItem("img-1", EvidenceKind.IMAGE),
        EvidenceItem("file-1", EvidenceKind.FILE, "借条.pdf"),
    ),
    editing=True,
    confirming=Confirmation.RESTART,
    invalid_count=2,
    last_active=NOW,
)


def test_round_trip_through_json() -> None:
    stored = json.dumps(FULL.to_dict(), ensure_ascii=False)
    assert ConversationState.from_dict(json.loads(stored)) == FULL
    initial = ConversationState.initial()
    assert ConversationState.from_dict(json.loads(json.dumps(initial.to_dict()))) == initial


def _json_types_only(value: Any) -> bool:
    if value is None or isinstance(value, str | int | bool):
        return True  # (float only appears as coordinates)
    if isinstance(value, float):
        return True
    if isinstance(value, list):
        return all(_json_types_only(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_types_only(v) for k, v in value.items())
    return False


def test_to_dict_is_json_types_only() -> None:
    d = FULL.to_dict()
    assert _json_types_only(d)
    assert d["v"] == SCHEMA_VERSION
    assert d["last_active"] == NOW.isoformat()


def test_a_real_conversation_round_trips_at_every_turn() -> None:
    chat = Chat()  # Chat checks the round trip after every advance
    chat.answer_until("summary")
    assert ConversationState.from_dict(chat.state.to_dict()) == chat.state


def _broken(**changes: Any) -> dict[str, Any]:
    d = FULL.to_dict()
    d.update(changes)
    return d


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        "state",
        42,
        [],
        {},
        {"v": 999},
        _broken(v=SCHEMA_VERSION + 1),
        _broken(phase="dancing"),
        _broken(step=3),
        _broken(history="consent"),
        _broken(answers=[["a", 1]]),
        _broken(answers={"amount": {"t": "decimal", "v": "NaN"}}),
        _broken(answers={"amount": {"t": "decimal", "v": "abc"}}),
        _broken(answers={"x": {"t": "alien"}}),
        _broken(answers={"x": 3}),
        _broken(answers={"place": {"t": "place", "text": " ", "lat": None, "lon": None}}),
        _broken(answers={"place": {"t": "place", "text": "x", "lat": True, "lon": None}}),
        _broken(evidence=[{"media_id": "", "kind": "image", "title": None}]),
        _broken(evidence=[{"media_id": "m", "kind": "smell", "title": None}]),
        _broken(editing="yes"),
        _broken(confirming="maybe"),
        _broken(invalid_count=-1),
        _broken(invalid_count=True),
        _broken(invalid_count="2"),
        _broken(last_active="yesterday"),
        _broken(phase="idle"),  # step set while idle: inconsistent
        _broken(step=None),  # collecting without a step
    ],
)
def test_garbage_gives_the_initial_state(garbage: object) -> None:
    assert ConversationState.from_dict(garbage) == ConversationState.initial()


def test_transition_rules() -> None:
    idle = ConversationState.initial()
    collecting = idle.transition(Phase.COLLECTING, step="consent")
    assert collecting.phase is Phase.COLLECTING and collecting.step == "consent"
    with pytest.raises(InvalidTransition) as caught:
        idle.transition(Phase.SUBMITTING)
    assert "idle" in str(caught.value).lower() and "submitting" in str(caught.value).lower()
    with pytest.raises(InvalidTransition):
        collecting.transition(Phase.SUBMITTING)
    reviewing = collecting.transition(Phase.REVIEWING)
    assert reviewing.step is None
    submitting = reviewing.transition(Phase.SUBMITTING)
    assert submitting.transition(Phase.REVIEWING).phase is Phase.REVIEWING


def test_transition_resets_what_belongs_to_the_old_question() -> None:
    state = ConversationState(
        phase=Phase.COLLECTING, step="facts", invalid_count=2, confirming=Confirmation.CANCEL
    )
    moved = state.transition(Phase.COLLECTING, step="claim")
    assert moved.invalid_count == 0 and moved.confirming is None
    editing = state.transition(Phase.COLLECTING, step="claim", editing=True)
    assert editing.transition(Phase.REVIEWING).editing is False


@pytest.mark.parametrize(
    "fields",
    [
        {"phase": Phase.COLLECTING},
        {"phase": Phase.IDLE, "step": "facts"},
        {"phase": Phase.REVIEWING, "editing": True},
        {"phase": Phase.IDLE, "confirming": Confirmation.CANCEL},
        {"invalid_count": -1},
        {"answers": (("a", "1"), ("a", "2"))},
    ],
)
def test_inconsistent_states_cannot_be_made(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ConversationState(**fields)


def test_answers_replace_in_place() -> None:
    state = ConversationState.initial().with_answer("a", "1").with_answer("b", None)
    state = state.with_answer("a", "2")
    assert state.answers == (("a", "2"), ("b", None))
    assert state.has_answer("b") and state.answer("b") is None
    assert not state.has_answer("c") and state.answer("c") is None


def test_last_active_keeps_its_timezone() -> None:
    moment = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    state = ConversationState(last_active=moment)
    assert ConversationState.from_dict(state.to_dict()).last_active == moment
