"""Where one resident's conversation stands, and how it is stored between messages.

Rules of the lifecycle (:class:`Phase`); :meth:`ConversationState.transition` is the one place
that changes it and raises :class:`~jiefen.errors.InvalidTransition` for any other move::

    IDLE ──start──▶ COLLECTING ──last step──▶ REVIEWING ──确认──▶ SUBMITTING ──CaseCreated──▶ IDLE
                      ▲     ◀──修改 N / 返回──     ▲                 │
                      │                           └─CaseCreationFailed┘
    取消 / 不同意 / unsubscribe: any phase → IDLE;  重新开始: any filing phase → COLLECTING

* ``step`` is set exactly while COLLECTING; ``editing`` (came from the summary via 修改 N, so
  the answer returns there) only while COLLECTING.
* ``history`` is the stack of steps answered on the way here, for 返回.
* ``confirming`` is a pending 取消/重新开始 question (是/否), in any filing phase.
* ``invalid_count`` counts invalid answers to the current question; it resets when the step
  changes.
* An IDLE conversation keeps nothing: the engine always returns exactly
  :meth:`ConversationState.initial` for it, so the edge may simply delete the stored state.

Serialised with :meth:`to_dict` (JSON types only) and read back with :meth:`from_dict`, which
never raises: a dict of another schema version or garbage becomes the initial state. Note that
the dict holds the resident's full ID number in the clear: the store must protect it (TTL,
encryption at rest) like the case store does.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import types
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from cases.draft import Category, EvidenceItem, EvidenceKind, LanguageNeed, MediationMode, Place
from jiefen.errors import InvalidTransition

SCHEMA_VERSION = 1


class Phase(enum.Enum):
    """The lifecycle of one intake conversation (rules in the module docstring)."""

    IDLE = "idle"
    COLLECTING = "collecting"
    REVIEWING = "reviewing"
    SUBMITTING = "submitting"


class Confirmation(enum.Enum):
    """A destructive command waiting for the resident's 是/否."""

    CANCEL = "cancel"
    RESTART = "restart"


_ALLOWED: dict[Phase, frozenset[Phase]] = {
    Phase.IDLE: frozenset({Phase.IDLE, Phase.COLLECTING}),
    Phase.COLLECTING: frozenset({Phase.COLLECTING, Phase.REVIEWING, Phase.IDLE}),
    Phase.REVIEWING: frozenset({Phase.REVIEWING, Phase.COLLECTING, Phase.SUBMITTING, Phase.IDLE}),
    Phase.SUBMITTING: frozenset({Phase.SUBMITTING, Phase.REVIEWING, Phase.COLLECTING, Phase.IDLE}),
}

#: The value types an answer may have (what the step parsers return).
AnswerValue = str | bool | Decimal | Category | MediationMode | Place | LanguageNeed | None


@dataclass(frozen=True, slots=True)
class ConversationState:
    """One resident's conversation; immutable, every change makes a new state."""

    phase: Phase = Phase.IDLE
    step: str | None = None
    history: tuple[str, ...] = ()
    answers: tuple[tuple[str, AnswerValue], ...] = ()
    evidence: tuple[EvidenceItem, ...] = ()
    editing: bool = False
    confirming: Confirmation | None = None
    invalid_count: int = 0
    last_active: datetime.datetime | None = None

    def __post_init__(self) -> None:
        if (self.phase is Phase.COLLECTING) != (self.step is not None):
            raise ValueError(f"step must be set exactly while collecting (phase {self.phase})")
        if self.editing and self.phase is not Phase.COLLECTING:
            raise ValueError(f"editing only while collecting (phase {self.phase})")
        if self.confirming is not None and self.phase is Phase.IDLE:
            raise ValueError("nothing to confirm while idle")
        if self.invalid_count < 0:
            raise ValueError("invalid_count cannot be negative")
        keys = [key for key, _ in self.answers]
        if len(keys) != len(set(keys)):
            raise ValueError("an answer key appears twice")

    @classmethod
    def initial(cls) -> ConversationState:
        """A resident who is not filing anything."""
        return cls()

    # --- answers -----------------------------------------------------------------------------

    def has_answer(self, key: str) -> bool:
        return any(k == key for k, _ in self.answers)

    def answer(self, key: str) -> AnswerValue:
        """The answer kept under ``key``, or ``None`` when there is none."""
        for k, value in self.answers:
            if k == key:
                return value
        return None

    def with_answer(self, key: str, value: AnswerValue) -> ConversationState:
        """This state with ``key`` answered (replacing an earlier answer in place)."""
        if self.has_answer(key):
            answers = tuple((k, value if k == key else v) for k, v in self.answers)
        else:
            answers = (*self.answers, (key, value))
        return dataclasses.replace(self, answers=answers)

    # --- the one setter of the lifecycle -------------------------------------------------------

    def transition(self, phase: Phase, **changes: Any) -> ConversationState:
        """Move to ``phase`` (applying ``changes`` to other fields), if the rules allow it.

        Raises :class:`InvalidTransition` naming both phases otherwise. Fields tied to a phase
        are reset unless given: leaving COLLECTING clears ``step`` and ``editing``; a new phase
        or step clears ``invalid_count`` and ``confirming``.
        """
        if phase not in _ALLOWED[self.phase]:
            raise InvalidTransition("conversation", self.phase, phase)
        step = changes.get("step", self.step if phase is Phase.COLLECTING else None)
        changes.setdefault("step", step)
        if phase is not Phase.COLLECTING:
            changes.setdefault("editing", False)
        if phase is not self.phase or step != self.step:
            changes.setdefault("invalid_count", 0)
        changes.setdefault("confirming", None)
        return dataclasses.replace(self, phase=phase, **changes)

    # --- storage -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """This state as JSON types only (str, int, bool, None, list, dict)."""
        return {
            "v": SCHEMA_VERSION,
            "phase": self.phase.value,
            "step": self.step,
            "history": list(self.history),
            "answers": {key: _encode(value) for key, value in self.answers},
            "evidence": [
                {"media_id": e.media_id, "kind": e.kind.value, "title": e.title}
                for e in self.evidence
            ],
            "editing": self.editing,
            "confirming": self.confirming.value if self.confirming else None,
            "invalid_count": self.invalid_count,
            "last_active": self.last_active.isoformat() if self.last_active else None,
        }

    @classmethod
    def from_dict(cls, data: object) -> ConversationState:
        """The state :meth:`to_dict` produced; anything else (other version, garbage) → initial.

        Never raises: a stored state we cannot read must not lock a resident out, so any error
        while decoding means starting afresh.
        """
        try:
            return _decode(data)
        except Exception:  # by contract: unreadable state → initial, whatever went wrong
            return cls.initial()


def _encode(value: AnswerValue) -> Any:
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, Decimal):
        return {"t": "decimal", "v": str(value)}
    if isinstance(value, Category):
        return {"t": "category", "v": value.value}
    if isinstance(value, MediationMode):
        return {"t": "mode", "v": value.value}
    if isinstance(value, Place):
        return {"t": "place", "text": value.text, "lat": value.latitude, "lon": value.longitude}
    return {"t": "language", "v": value.language, "interpreter": value.needs_interpreter}


def _typed(value: object, kind: type[Any] | types.UnionType) -> Any:
    """``value`` if it is of ``kind`` (the decoder trusts nothing in a stored dict)."""
    if not isinstance(value, kind):
        raise TypeError(f"expected {kind}, got {type(value).__name__}")
    return value


def _coordinate(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("a coordinate is not a bool")
    return float(_typed(value, int | float))


def _decode_answer(stored: object) -> AnswerValue:
    if stored is None or isinstance(stored, str | bool):
        return stored
    raw: dict[str, Any] = _typed(stored, dict)
    tag = raw["t"]
    if tag == "decimal":
        value = Decimal(_typed(raw["v"], str))
        if not value.is_finite():
            raise ValueError("amount is not finite")
        return value
    if tag == "category":
        return Category(raw["v"])
    if tag == "mode":
        return MediationMode(raw["v"])
    if tag == "place":
        return Place(_typed(raw["text"], str), _coordinate(raw["lat"]), _coordinate(raw["lon"]))
    if tag == "language":
        return LanguageNeed(_typed(raw["v"], str), _typed(raw["interpreter"], bool))
    raise ValueError(f"unknown answer tag {tag!r}")


def _decode(data: object) -> ConversationState:
    d = _typed(data, dict)
    if d.get("v") != SCHEMA_VERSION:
        raise ValueError("another schema version")
    answers = _typed(d["answers"], dict)
    evidence = tuple(
        EvidenceItem(
            _typed(e["media_id"], str),
            EvidenceKind(e["kind"]),
            _typed(e["title"], str | None),
        )
        for e in _typed(d["evidence"], list)
    )
    last_active = d["last_active"]
    invalid_count = d["invalid_count"]
    if type(invalid_count) is not int:
        raise TypeError("invalid_count must be an int")
    confirming = d["confirming"]
    return ConversationState(
        phase=Phase(d["phase"]),
        step=_typed(d["step"], str | None),
        history=tuple(_typed(h, str) for h in _typed(d["history"], list)),
        answers=tuple((_typed(k, str), _decode_answer(v)) for k, v in answers.items()),
        evidence=evidence,
        editing=_typed(d["editing"], bool),
        confirming=None if confirming is None else Confirmation(confirming),
        invalid_count=invalid_count,
        last_active=(
            None
            if last_active is None
            else datetime.datetime.fromisoformat(_typed(last_active, str))
        ),
    )
