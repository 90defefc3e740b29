"""The seat rules of ``mediation_rooms.room``: which extra seat the mediator may open, and
who may see and hear an extra seat's person. Pure: no I/O."""

from __future__ import annotations

import json

import pytest

from mediation_rooms.room import (
    BASE_SEATS,
    RoomState,
    SeatRefused,
    SeatRole,
    SessionView,
    Side,
    check_new_seat,
)

MEDIATOR, APPLICANT, RESPONDENT = BASE_SEATS
INTERPRETER = SeatRole.INTERPRETER
APPLICANT_AGENT = SeatRole.APPLICANT_AGENT
RESPONDENT_AGENT = SeatRole.RESPONDENT_AGENT


@pytest.mark.parametrize("state", [RoomState.SCHEDULED, RoomState.OPEN, RoomState.LIVE])
def test_an_extra_seat_opens_in_a_room_that_has_not_ended(state: RoomState) -> None:
    check_new_seat(state, BASE_SEATS, INTERPRETER)
    check_new_seat(state, (*BASE_SEATS, INTERPRETER), RESPONDENT_AGENT)


@pytest.mark.parametrize(
    ("state", "seats", "seat", "reason"),
    [
        (RoomState.ENDED, BASE_SEATS, INTERPRETER, "room_closed"),
        (RoomState.ARCHIVED, BASE_SEATS, INTERPRETER, "room_closed"),
        (RoomState.LIVE, BASE_SEATS, APPLICANT, "not_extra_seat"),
        (RoomState.LIVE, BASE_SEATS, MEDIATOR, "not_extra_seat"),
        (RoomState.LIVE, (*BASE_SEATS, INTERPRETER), INTERPRETER, "seat_taken"),
        (
            RoomState.LIVE,
            (*BASE_SEATS, INTERPRETER, APPLICANT_AGENT),
            RESPONDENT_AGENT,
            "too_many_seats",
        ),
    ],
)
def test_refusals_name_their_reason(
    state: RoomState, seats: tuple[SeatRole, ...], seat: SeatRole, reason: str
) -> None:
    with pytest.raises(SeatRefused) as refused:
        check_new_seat(state, seats, seat)
    assert refused.value.reason == reason


def test_an_interpreter_stays_with_the_mediator_and_an_agent_with_their_party_in_a_caucus() -> None:
    everyone = {*BASE_SEATS, INTERPRETER, APPLICANT_AGENT}
    view = SessionView(admitted=everyone, caucus=Side.RESPONDENT)
    # Private session with the respondent: the interpreter translates in it ...
    assert view.may_forward(INTERPRETER, RESPONDENT, "audio")
    assert view.may_forward(RESPONDENT, INTERPRETER, "video")
    assert view.may_forward(MEDIATOR, INTERPRETER, "audio")
    # ... while the applicant's agent is on hold with the applicant, both ways.
    assert not view.may_forward(APPLICANT_AGENT, MEDIATOR, "audio")
    assert not view.may_forward(INTERPRETER, APPLICANT_AGENT, "video")
    assert not view.may_forward(RESPONDENT, APPLICANT_AGENT, "audio")
    view.caucus = Side.APPLICANT
    assert view.may_forward(APPLICANT_AGENT, APPLICANT, "audio")
    assert view.may_forward(INTERPRETER, APPLICANT_AGENT, "video")
    # Nothing reaches or leaves a seat that is opened but not admitted.
    view = SessionView(admitted=set(BASE_SEATS))
    assert not view.may_forward(MEDIATOR, INTERPRETER, "video")
    assert not view.may_forward(INTERPRETER, MEDIATOR, "audio")


def test_a_seat_name_loses_control_and_format_characters() -> None:
    from mediation_rooms.signalling import OpenSeat, ProtocolError, parse_client_message

    message = parse_client_message(
        json.dumps({"type": "open_seat", "seat": "interpreter", "name": " 阿依\u202e\u0007木呷 "})
    )
    assert message == OpenSeat(SeatRole.INTERPRETER, "阿依木呷")
    with pytest.raises(ProtocolError) as refused:
        parse_client_message(
            json.dumps({"type": "open_seat", "seat": "interpreter", "name": "\u200b\u202e"})
        )
    assert refused.value.code == "invalid_field"
