from __future__ import annotations

import itertools

import pytest

from cases.status import (
    ALLOWED_TRANSITIONS,
    INITIAL_STATUS,
    CaseStatus,
    check_transition,
    plain_words,
)
from jiefen.errors import InvalidTransition


def test_every_status_has_rules_and_plain_words() -> None:
    for status in CaseStatus:
        assert status in ALLOWED_TRANSITIONS
        words = plain_words(status)
        assert words and not words.isascii()


def test_initial_status_waits_for_a_mediator() -> None:
    assert INITIAL_STATUS is CaseStatus.AWAITING_ACCEPTANCE
    assert plain_words(INITIAL_STATUS) == "已转交调解组织，等待调解员签收"


@pytest.mark.parametrize(
    "path",
    [
        ["submitted", "awaiting_acceptance", "accepted", "respondent_contacted", "scheduled",
         "in_mediation", "settled", "judicially_confirmed", "closed"],
        ["awaiting_acceptance", "submitted", "awaiting_acceptance", "withdrawn", "closed"],
        ["respondent_contacted", "respondent_refused", "handed_to_court", "closed"],
        ["scheduled", "in_mediation", "scheduled", "in_mediation", "failed", "handed_to_court"],
    ],
)  # fmt: skip
def test_lifecycles_the_rules_allow(path: list[str]) -> None:
    statuses = [CaseStatus(value) for value in path]
    for old, new in itertools.pairwise(statuses):
        check_transition(old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (CaseStatus.AWAITING_ACCEPTANCE, CaseStatus.SETTLED),
        (CaseStatus.SETTLED, CaseStatus.FAILED),
        (CaseStatus.FAILED, CaseStatus.JUDICIALLY_CONFIRMED),
        (CaseStatus.SETTLED, CaseStatus.WITHDRAWN),
        (CaseStatus.CLOSED, CaseStatus.SUBMITTED),
        (CaseStatus.ACCEPTED, CaseStatus.ACCEPTED),
    ],
)
def test_forbidden_moves_name_both_states(old: CaseStatus, new: CaseStatus) -> None:
    with pytest.raises(InvalidTransition) as caught:
        check_transition(old, new)
    assert caught.value.old == old.value
    assert caught.value.new == new.value
    assert f"{old.value} -> {new.value}" in str(caught.value)


def test_closed_is_the_only_final_state_and_every_state_reaches_it() -> None:
    assert [status for status in CaseStatus if status.is_final] == [CaseStatus.CLOSED]
    for start in CaseStatus:
        seen, frontier = {start}, [start]
        while frontier:
            for following in ALLOWED_TRANSITIONS[frontier.pop()] - seen:
                seen.add(following)
                frontier.append(following)
        assert CaseStatus.CLOSED in seen, start


def test_withdrawal_only_before_an_outcome() -> None:
    assert CaseStatus.SCHEDULED.is_open
    assert not CaseStatus.SETTLED.is_open
    assert not CaseStatus.CLOSED.is_open
