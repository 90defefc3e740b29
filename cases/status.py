"""The lifecycle of a case: one enum, the moves it may make, what each state means to residents.

Rules (人民调解法, 人民法院在线调解规则 2021):

- A case is ``SUBMITTED`` by the resident and at once routed to a mediation organisation,
  where it waits for a mediator to accept it (``AWAITING_ACCEPTANCE``, Art.12: within 3
  working days). An organisation that declines sends it back to ``SUBMITTED`` to be routed
  again.
- Once ``ACCEPTED``, the mediator contacts the other party (Art.15: within 3 working days):
  ``RESPONDENT_CONTACTED``. Mediation is voluntary (人民调解法 Art.17): a respondent who
  refuses ends it (``RESPONDENT_REFUSED``), also after a session was scheduled.
- ``SCHEDULED`` → ``IN_MEDIATION`` for a session; a session may be adjourned back to
  ``SCHEDULED``. A session ends ``SETTLED`` (an agreement signed by every party) or ``FAILED``.
- A settled case may be ``JUDICIALLY_CONFIRMED`` by a court (applied for within 30 days);
  a failed case, or one the respondent refused, may be ``HANDED_TO_COURT`` (诉调对接).
- The applicant may withdraw at any time before an outcome (``WITHDRAWN``).
- Every outcome ends in ``CLOSED``, which is final. Nothing moves to itself.

``check_transition`` is the only judge of a move; the one place that changes a stored status
(``state.case_store.set_case_status``) calls it and logs ``old -> new``.
"""

from __future__ import annotations

import enum

from jiefen.errors import InvalidTransition


class CaseStatus(enum.Enum):
    """Where a case stands. Values are stored in the database: never rename one."""

    SUBMITTED = "submitted"
    AWAITING_ACCEPTANCE = "awaiting_acceptance"
    ACCEPTED = "accepted"
    RESPONDENT_CONTACTED = "respondent_contacted"
    RESPONDENT_REFUSED = "respondent_refused"
    SCHEDULED = "scheduled"
    IN_MEDIATION = "in_mediation"
    SETTLED = "settled"
    FAILED = "failed"
    WITHDRAWN = "withdrawn"
    JUDICIALLY_CONFIRMED = "judicially_confirmed"
    HANDED_TO_COURT = "handed_to_court"
    CLOSED = "closed"

    @property
    def is_final(self) -> bool:
        return not ALLOWED_TRANSITIONS[self]

    @property
    def is_open(self) -> bool:
        """True while the case still waits for an outcome (the resident may withdraw)."""
        return CaseStatus.WITHDRAWN in ALLOWED_TRANSITIONS[self]


_S = CaseStatus

#: The status a case has once it is stored and routed.
INITIAL_STATUS = _S.AWAITING_ACCEPTANCE

ALLOWED_TRANSITIONS: dict[CaseStatus, frozenset[CaseStatus]] = {
    _S.SUBMITTED: frozenset({_S.AWAITING_ACCEPTANCE, _S.WITHDRAWN}),
    _S.AWAITING_ACCEPTANCE: frozenset({_S.ACCEPTED, _S.SUBMITTED, _S.WITHDRAWN}),
    _S.ACCEPTED: frozenset({_S.RESPONDENT_CONTACTED, _S.WITHDRAWN}),
    _S.RESPONDENT_CONTACTED: frozenset({_S.SCHEDULED, _S.RESPONDENT_REFUSED, _S.WITHDRAWN}),
    _S.RESPONDENT_REFUSED: frozenset({_S.HANDED_TO_COURT, _S.CLOSED}),
    _S.SCHEDULED: frozenset({_S.IN_MEDIATION, _S.RESPONDENT_REFUSED, _S.FAILED, _S.WITHDRAWN}),
    _S.IN_MEDIATION: frozenset({_S.SETTLED, _S.FAILED, _S.SCHEDULED, _S.WITHDRAWN}),
    _S.SETTLED: frozenset({_S.JUDICIALLY_CONFIRMED, _S.CLOSED}),
    _S.FAILED: frozenset({_S.HANDED_TO_COURT, _S.CLOSED}),
    _S.WITHDRAWN: frozenset({_S.CLOSED}),
    _S.JUDICIALLY_CONFIRMED: frozenset({_S.CLOSED}),
    _S.HANDED_TO_COURT: frozenset({_S.CLOSED}),
    _S.CLOSED: frozenset(),
}


def check_transition(old: CaseStatus, new: CaseStatus) -> None:
    """Pass if a case may move ``old`` -> ``new``; else raise InvalidTransition naming both."""
    if new not in ALLOWED_TRANSITIONS[old]:
        raise InvalidTransition("case", old.value, new.value)


# What a resident reads for each status (「查询」): warm, plain, and says what happens next.
PLAIN_WORDS: dict[CaseStatus, str] = {
    _S.SUBMITTED: "已收到您的申请，正在为您安排调解组织",
    _S.AWAITING_ACCEPTANCE: "已转交调解组织，等待调解员签收",
    _S.ACCEPTED: "调解员已签收，正在联系对方当事人",
    _S.RESPONDENT_CONTACTED: "调解员已联系对方，正在商定调解时间",
    _S.RESPONDENT_REFUSED: "对方暂不同意调解，您还可以通过诉讼等途径解决",
    _S.SCHEDULED: "调解时间已约定，请留意通知按时参加",
    _S.IN_MEDIATION: "正在调解中",
    _S.SETTLED: "调解成功，已达成调解协议",
    _S.FAILED: "这次调解没有达成一致，调解员会告诉您其他解决途径",
    _S.WITHDRAWN: "您已撤回申请",
    _S.JUDICIALLY_CONFIRMED: "调解协议已经法院司法确认",
    _S.HANDED_TO_COURT: "已转交法院处理",
    _S.CLOSED: "案件已办结",
}


def plain_words(status: CaseStatus) -> str:
    """The status in plain Chinese for residents, e.g. 「已转交调解组织，等待调解员签收」."""
    return PLAIN_WORDS[status]
