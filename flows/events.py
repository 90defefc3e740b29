"""What can happen to a conversation: the resident's messages, and the edge's feedback.

The WeChat edge (``bot/``) parses each push into exactly one of these before calling
:func:`flows.engine.advance`; feedback events report the outcome of an effect the engine asked
for (:class:`~flows.effects.CreateCase` → :class:`CaseCreated` or :class:`CaseCreationFailed`,
:class:`~flows.effects.ListCases` → :class:`CasesListed`). All are frozen and carry no WeChat
types.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cases.draft import EvidenceKind

# --- messages from the resident ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Text:
    """A text message, exactly as typed."""

    content: str


@dataclass(frozen=True, slots=True)
class Voice:
    """A voice message; ``recognition`` is WeChat's speech-to-text when it gave one."""

    media_id: str
    recognition: str | None = None


@dataclass(frozen=True, slots=True)
class Media:
    """An image, video or file (``kind`` is never ``VOICE``: voice arrives as :class:`Voice`)."""

    media_id: str
    kind: EvidenceKind
    title: str | None = None


@dataclass(frozen=True, slots=True)
class Location:
    """A WeChat location message: the place label WeChat shows, and its coordinates."""

    label: str
    latitude: float
    longitude: float


@dataclass(frozen=True, slots=True)
class Subscribe:
    """The resident followed the Official Account."""


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """The resident unfollowed; nothing can be sent to them any more."""


@dataclass(frozen=True, slots=True)
class Unsupported:
    """Anything else the resident sent (a link, a menu button we have no action for …);
    ``kind`` names it. The resident is told what the account understands."""

    kind: str


@dataclass(frozen=True, slots=True)
class Notice:
    """A push that is not the resident speaking: WeChat reporting on something (a template
    message delivered, the location the phone reports by itself, a link in the menu opened, a
    photo about to be sent). It changes nothing and is never answered; ``kind`` names it."""

    kind: str


# --- feedback from the edge --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CaseCreated:
    """The case from a :class:`~flows.effects.CreateCase` was stored and routed."""

    case_no: str
    org_name: str
    org_phone: str | None
    accept_deadline: datetime.date


@dataclass(frozen=True, slots=True)
class CaseCreationFailed:
    """The case could not be stored (e.g. the database is down); the resident may retry."""


@dataclass(frozen=True, slots=True)
class CaseSummary:
    """One of the resident's cases, already in plain words for the list."""

    case_no: str
    category_label: str
    status_text: str
    filed_on: datetime.date


@dataclass(frozen=True, slots=True)
class CasesListed:
    """The answer to :class:`~flows.effects.ListCases`, newest first."""

    cases: tuple[CaseSummary, ...]


Message = Text | Voice | Media | Location | Subscribe | Unsubscribe | Unsupported | Notice
Feedback = CaseCreated | CaseCreationFailed | CasesListed
Event = Message | Feedback
