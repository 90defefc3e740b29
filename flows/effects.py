"""What the engine asks the edge to do; the edge carries each one out, in order.

* :class:`Reply` — send this text to the resident (one per inbound message; if an advance ever
  yields several, the edge joins them with a blank line).
* :class:`CreateCase` — store and route the draft, then feed back
  :class:`~flows.events.CaseCreated` or :class:`~flows.events.CaseCreationFailed`.
* :class:`ListCases` — look up the resident's cases, then feed back
  :class:`~flows.events.CasesListed`.
* :class:`FetchMedia` — fire and forget: download this media into the evidence store now, in the
  background (WeChat media expires after 3 days; a resident may resume up to 7 days later).
* :class:`RequestHuman` — record a callback request for staff.
"""

from __future__ import annotations

from dataclasses import dataclass

from cases.draft import CaseDraft, EvidenceKind


@dataclass(frozen=True, slots=True)
class Reply:
    """Text to send to the resident."""

    text: str


@dataclass(frozen=True, slots=True)
class CreateCase:
    """Create a case from the confirmed draft; answer with CaseCreated or CaseCreationFailed."""

    draft: CaseDraft


@dataclass(frozen=True, slots=True)
class ListCases:
    """List the resident's cases; answer with CasesListed."""


@dataclass(frozen=True, slots=True)
class FetchMedia:
    """Download this WeChat media into the evidence store in the background; no feedback."""

    media_id: str
    kind: EvidenceKind


@dataclass(frozen=True, slots=True)
class RequestHuman:
    """Record that the resident asked for a person to call back.

    ``step`` is the intake step they were on (``"summary"`` while reviewing, ``None`` when not
    filing); ``note`` is a one-line Chinese note for staff (may include the phone they gave).
    """

    step: str | None
    note: str


Effect = Reply | CreateCase | ListCases | FetchMedia | RequestHuman
