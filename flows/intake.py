"""The intake flow: how a resident files a dispute, declared as data.

Order and content follow issue 2 ("What a resident can do", 2.1–2.13): consent first (nothing is
kept without it), then the twelve items listed and numbered in the summary, in this order:
category, applicant name, phone, ID, respondent name, respondent phone, place, facts, claim,
amount, evidence, mode, language (13 items; 修改 N uses these numbers).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from decimal import Decimal
from typing import TypeVar

from cases.draft import (
    CaseDraft,
    Category,
    EvidenceItem,
    LanguageNeed,
    MediationMode,
    Place,
)
from cases.id_number import mask_id_number
from flows import texts, validators
from flows.conversation_state import AnswerValue, ConversationState
from flows.events import Location
from flows.flow import Flow, Parser, Step, StepKind

T = TypeVar("T")

#: Summary lines are clipped to keep the whole summary well under WeChat's 2048-byte limit.
_CLIP_SHORT, _CLIP_LONG = 30, 60


def _clip(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _text(parse: Callable[[str], AnswerValue]) -> Parser:
    """A parser that does not need today's date."""

    def parser(text: str, today: datetime.date) -> AnswerValue:
        return parse(text)

    return parser


def _id_number(text: str, today: datetime.date) -> str:
    return validators.parse_id_number(text, today=today)


def _place_from_location(location: Location) -> Place:
    label = location.label.strip() or texts.location_fallback(location.latitude, location.longitude)
    return Place(_clip(label, validators.PLACE_MAX), location.latitude, location.longitude)


def _acknowledge_place(place: Place) -> str:
    return texts.place_from_location(place.text) if place.latitude is not None else ""


def _show_phone(phone: str | None) -> str:
    return phone or texts.UNKNOWN


def _show_evidence(evidence: tuple[EvidenceItem, ...]) -> str:
    return texts.evidence_count(len(evidence))


def _show_language(need: LanguageNeed) -> str:
    return texts.language_shown(need.language, need.needs_interpreter)


def _get(state: ConversationState, key: str, kind: type[T]) -> T:
    value = state.answer(key)
    if not isinstance(value, kind):
        raise TypeError(f"answer {key!r} is {type(value).__name__}, not {kind.__name__}")
    return value


def _get_optional(state: ConversationState, key: str, kind: type[T]) -> T | None:
    return None if state.answer(key) is None else _get(state, key, kind)


def build_draft(state: ConversationState) -> CaseDraft:
    """The case draft from a state whose intake answers are complete.

    Raises ``TypeError``/``ValueError`` when an answer is missing or of the wrong type.
    """
    return CaseDraft(
        category=_get(state, "category", Category),
        applicant_name=_get(state, "applicant_name", str),
        applicant_phone=_get(state, "applicant_phone", str),
        applicant_id_number=_get(state, "applicant_id", str),
        respondent_name=_get(state, "respondent_name", str),
        respondent_phone=_get_optional(state, "respondent_phone", str),
        place=_get(state, "place", Place),
        facts=_get(state, "facts", str),
        claim=_get(state, "claim", str),
        amount_yuan=_get_optional(state, "amount", Decimal),
        mode=_get(state, "mode", MediationMode),
        language=_get(state, "language", LanguageNeed),
        evidence=state.evidence,
        facts_voice_media_id=_get_optional(state, FACTS_VOICE_KEY, str),
    )


#: Answer key under which the media id of a voice message describing the facts is kept.
FACTS_VOICE_KEY = "facts_voice"


INTAKE_FLOW = Flow(
    name="intake",
    build_draft=build_draft,
    contact_key="applicant_phone",
    steps=(
        Step(
            key="consent",
            kind=StepKind.CONSENT,
            prompt=texts.CONSENT_PROMPT,
            example=texts.CONSENT_EXAMPLE,
            help=texts.CONSENT_HELP,
            parse=_text(validators.parse_consent),
            acknowledge=lambda _: texts.CONSENT_ACK,
        ),
        Step(
            key="category",
            label=texts.LABEL_CATEGORY,
            prompt=texts.CATEGORY_PROMPT,
            example=texts.CATEGORY_EXAMPLE,
            help=texts.CATEGORY_HELP,
            parse=_text(validators.parse_category),
            show=lambda category: category.label,
        ),
        Step(
            key="applicant_name",
            label=texts.LABEL_APPLICANT_NAME,
            prompt=texts.APPLICANT_NAME_PROMPT,
            example=texts.APPLICANT_NAME_EXAMPLE,
            help=texts.APPLICANT_NAME_HELP,
            parse=_text(validators.parse_name),
            acknowledge=texts.greet_applicant,
        ),
        Step(
            key="applicant_phone",
            label=texts.LABEL_APPLICANT_PHONE,
            prompt=texts.APPLICANT_PHONE_PROMPT,
            example=texts.APPLICANT_PHONE_EXAMPLE,
            help=texts.APPLICANT_PHONE_HELP,
            parse=_text(validators.parse_phone),
            acknowledge=texts.phone_recorded,
        ),
        Step(
            key="applicant_id",
            label=texts.LABEL_ID,
            prompt=texts.ID_PROMPT,
            example=texts.ID_EXAMPLE,
            help=texts.ID_HELP,
            parse=_id_number,
            show=mask_id_number,
            acknowledge=lambda id_number: texts.id_recorded(mask_id_number(id_number)),
            mask=mask_id_number,
        ),
        Step(
            key="respondent_name",
            label=texts.LABEL_RESPONDENT_NAME,
            prompt=texts.RESPONDENT_NAME_PROMPT,
            example=texts.RESPONDENT_NAME_EXAMPLE,
            help=texts.RESPONDENT_NAME_HELP,
            parse=_text(validators.parse_party_name),
            show=lambda name: _clip(name, _CLIP_SHORT),
        ),
        Step(
            key="respondent_phone",
            label=texts.LABEL_RESPONDENT_PHONE,
            prompt=texts.RESPONDENT_PHONE_PROMPT,
            example=texts.RESPONDENT_PHONE_EXAMPLE,
            help=texts.RESPONDENT_PHONE_HELP,
            parse=_text(validators.parse_optional_phone),
            show=_show_phone,
        ),
        Step(
            key="place",
            label=texts.LABEL_PLACE,
            prompt=texts.PLACE_PROMPT,
            example=texts.PLACE_EXAMPLE,
            help=texts.PLACE_HELP,
            parse=_text(validators.parse_place),
            show=lambda place: _clip(place.text, _CLIP_SHORT + 10),
            acknowledge=_acknowledge_place,
            from_location=_place_from_location,
        ),
        Step(
            key="facts",
            label=texts.LABEL_FACTS,
            prompt=texts.FACTS_PROMPT,
            example=texts.FACTS_EXAMPLE,
            help=texts.FACTS_HELP,
            parse=_text(validators.parse_facts),
            show=lambda facts: _clip(facts, _CLIP_LONG),
            voice_key=FACTS_VOICE_KEY,
        ),
        Step(
            key="claim",
            label=texts.LABEL_CLAIM,
            prompt=texts.CLAIM_PROMPT,
            example=texts.CLAIM_EXAMPLE,
            help=texts.CLAIM_HELP,
            parse=_text(validators.parse_claim),
            show=lambda claim: _clip(claim, _CLIP_LONG),
        ),
        Step(
            key="amount",
            label=texts.LABEL_AMOUNT,
            prompt=texts.AMOUNT_PROMPT,
            example=texts.AMOUNT_EXAMPLE,
            help=texts.AMOUNT_HELP,
            parse=_text(validators.parse_amount),
            show=texts.format_amount,
            acknowledge=lambda amount: texts.amount_recorded(texts.format_amount(amount)),
        ),
        Step(
            key="evidence",
            kind=StepKind.MEDIA,
            label=texts.LABEL_EVIDENCE,
            prompt=texts.EVIDENCE_PROMPT,
            example=texts.EVIDENCE_EXAMPLE,
            help=texts.EVIDENCE_HELP,
            parse=_text(validators.parse_evidence_done),
            show=_show_evidence,
        ),
        Step(
            key="mode",
            label=texts.LABEL_MODE,
            prompt=texts.MODE_PROMPT,
            example=texts.MODE_EXAMPLE,
            help=texts.MODE_HELP,
            parse=_text(validators.parse_mode),
            show=lambda mode: mode.label,
        ),
        Step(
            key="language",
            label=texts.LABEL_LANGUAGE,
            prompt=texts.LANGUAGE_PROMPT,
            example=texts.LANGUAGE_EXAMPLE,
            help=texts.LANGUAGE_HELP,
            parse=_text(validators.parse_language),
            show=_show_language,
        ),
    ),
)
