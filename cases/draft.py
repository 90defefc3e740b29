"""What a resident files: the case draft that the intake flow builds and the case store persists.

Pure data shared by ``flows`` (which builds a draft from the conversation) and ``state`` (which
stores it). Every type here validates itself and is frozen, so a draft that exists is a draft that
can be stored.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from decimal import Decimal


class Category(enum.Enum):
    """The dispute categories offered in the intake menu, in menu order."""

    NEIGHBOUR = "neighbour"
    FAMILY = "family"
    PROPERTY_MANAGEMENT = "property_management"
    LABOUR = "labour"
    LOAN_CONTRACT = "loan_contract"
    TRAFFIC = "traffic"
    CONSUMER_TRAVEL = "consumer_travel"
    OTHER = "other"

    @property
    def label(self) -> str:
        return CATEGORY_LABELS[self]


CATEGORY_LABELS: dict[Category, str] = {
    Category.NEIGHBOUR: "邻里纠纷",
    Category.FAMILY: "婚姻家庭",
    Category.PROPERTY_MANAGEMENT: "物业纠纷",
    Category.LABOUR: "劳动争议",
    Category.LOAN_CONTRACT: "借贷/合同",
    Category.TRAFFIC: "交通事故",
    Category.CONSUMER_TRAVEL: "消费/旅游",
    Category.OTHER: "其他",
}


class MediationMode(enum.Enum):
    VIDEO = "video"
    IN_PERSON = "in_person"

    @property
    def label(self) -> str:
        return {MediationMode.VIDEO: "视频调解", MediationMode.IN_PERSON: "到场调解"}[self]


class EvidenceKind(enum.Enum):
    IMAGE = "image"
    VOICE = "voice"
    VIDEO = "video"
    FILE = "file"


@dataclass(frozen=True, slots=True)
class EvidenceItem:
    """One piece of evidence as WeChat gave it: a temporary media id we fetch in the background."""

    media_id: str
    kind: EvidenceKind
    title: str | None = None

    def __post_init__(self) -> None:
        if not self.media_id:
            raise ValueError("evidence needs a media_id")


@dataclass(frozen=True, slots=True)
class Place:
    """Where the dispute happened or the parties live: free text, or a WeChat location."""

    text: str
    latitude: float | None = None
    longitude: float | None = None

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise ValueError("a place needs text")


@dataclass(frozen=True, slots=True)
class LanguageNeed:
    """The language the resident wants to mediate in, and whether an interpreter is needed."""

    language: str = "普通话"
    needs_interpreter: bool = False


@dataclass(frozen=True, slots=True)
class CaseDraft:
    """Everything the intake flow collected, ready to become a case.

    ``applicant_id_number`` is the full, checksum-verified 18-character resident ID in upper
    case; the store encrypts it and keeps only a masked copy in the clear.
    ``facts_voice_media_id`` is set when the resident described the facts by voice (kept as
    evidence even when WeChat's recognition text was used).
    """

    category: Category
    applicant_name: str
    applicant_phone: str
    applicant_id_number: str
    respondent_name: str
    respondent_phone: str | None
    place: Place
    facts: str
    claim: str
    amount_yuan: Decimal | None
    mode: MediationMode
    language: LanguageNeed
    evidence: tuple[EvidenceItem, ...] = field(default_factory=tuple)
    facts_voice_media_id: str | None = None

    def __post_init__(self) -> None:
        if len(self.applicant_phone) != 11 or not self.applicant_phone.isdigit():
            raise ValueError("applicant_phone must be 11 digits")
        if len(self.applicant_id_number) != 18:
            raise ValueError("applicant_id_number must be 18 characters")
        if self.amount_yuan is not None and self.amount_yuan < 0:
            raise ValueError("amount_yuan cannot be negative")
        for name in ("applicant_name", "respondent_name", "facts", "claim"):
            if not getattr(self, name).strip():
                raise ValueError(f"{name} is empty")
