"""A conversational flow declared as data: an ordered list of steps, each with its question.

The engine (:mod:`flows.engine`) interprets a :class:`Flow`; nothing here acts. Adding a
question to the intake is adding a :class:`Step` to :data:`flows.intake.INTAKE_FLOW`.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cases.draft import CaseDraft
from flows.commands import parse_command
from flows.conversation_state import AnswerValue, ConversationState
from flows.events import Location

#: Parses one answer: the raw text and today's date in, the value out; raises InvalidInput.
Parser = Callable[[str, datetime.date], AnswerValue]


class StepKind(enum.Enum):
    """How the engine treats a step's answers."""

    #: ``parse`` returns a bool; False ends the conversation at once and keeps nothing.
    CONSENT = "consent"
    #: ``parse`` returns the value kept under ``key``.
    ANSWER = "answer"
    #: Media and voice messages are collected as evidence; ``parse`` recognises «完成».
    MEDIA = "media"


@dataclass(frozen=True, slots=True)
class Step:
    """One question of a flow.

    ``label`` names the item in the summary (steps without one, like consent, are not listed
    and cannot be edited with 修改 N); ``show`` renders the kept value there (and when the
    question is asked again), ``acknowledge`` the optional line confirming a fresh answer.
    ``from_location`` accepts a WeChat location as the answer; ``voice_key`` makes a voice
    message's media id be kept under that answer key (and fetched) besides its recognition.
    ``mask`` hides what a message sent at this step says, in the transcript the edge keeps:
    for sensitive answers, mistyped ones included (see :meth:`Flow.transcript_text`).
    """

    key: str
    prompt: str
    example: str
    help: str
    parse: Parser
    kind: StepKind = StepKind.ANSWER
    label: str | None = None
    show: Callable[[Any], str] = str
    acknowledge: Callable[[Any], str] | None = None
    from_location: Callable[[Location], AnswerValue] | None = None
    voice_key: str | None = None
    mask: Callable[[str], str] | None = None


@dataclass(frozen=True, slots=True)
class Flow:
    """An ordered set of steps and how their answers become a :class:`CaseDraft`.

    ``build_draft`` is only called once every ANSWER/CONSENT step has an answer; it may raise
    ``ValueError``/``TypeError`` for a state whose answers do not fit (a corrupted store).
    ``contact_key`` names the answer holding the resident's phone, passed on to staff with a
    callback request; ``evidence_limit`` bounds the evidence kept in one conversation state.
    """

    name: str
    steps: tuple[Step, ...]
    build_draft: Callable[[ConversationState], CaseDraft]
    contact_key: str | None = None
    evidence_limit: int = 50
    # Look-ups derived from ``steps`` once: the engine asks them several times a message.
    _position: dict[str, int] = field(init=False, repr=False, compare=False)
    _items: tuple[Step, ...] = field(init=False, repr=False, compare=False)
    _item_numbers: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        keys = [step.key for step in self.steps]
        if not keys:
            raise ValueError("a flow needs steps")
        if len(keys) != len(set(keys)):
            raise ValueError(f"flow {self.name}: duplicate step keys")
        items = tuple(step for step in self.steps if step.label is not None)
        object.__setattr__(self, "_position", {key: index for index, key in enumerate(keys)})
        object.__setattr__(self, "_items", items)
        object.__setattr__(
            self, "_item_numbers", {step.key: number for number, step in enumerate(items, 1)}
        )

    @property
    def first(self) -> Step:
        return self.steps[0]

    @property
    def items(self) -> tuple[Step, ...]:
        """The steps listed (and numbered from 1) in the summary."""
        return self._items

    def has_step(self, key: str) -> bool:
        return key in self._position

    def step(self, key: str) -> Step:
        position = self._position.get(key)
        if position is None:
            raise KeyError(f"flow {self.name} has no step {key!r}")
        return self.steps[position]

    def transcript_text(self, state: ConversationState, text: str) -> str:
        """How a message saying ``text``, sent in ``state``, is kept in the transcript.

        As sent, unless it answers a step with a ``mask`` (a command, such as 「帮助」, is
        kept as sent): an answer is masked whether or not it is valid, since a mistyped
        ID number is as personal as a right one.
        """
        if state.step is None:
            return text
        mask = self.step(state.step).mask
        if mask is None or parse_command(text) is not None:
            return text
        return mask(text)

    def after(self, key: str) -> Step | None:
        """The step that follows ``key``, or ``None`` after the last."""
        index = self._position[key]
        return self.steps[index + 1] if index + 1 < len(self.steps) else None

    def item_number(self, key: str) -> int | None:
        """The summary number (1-based) of step ``key``, or ``None`` when it is not listed."""
        return self._item_numbers.get(key)
