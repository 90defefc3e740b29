"""A mediation room's rules: its lifecycle, its seats, and who may see and hear whom. No I/O.

Lifecycle (one setter, :meth:`RoomLifecycle.set_state`, checks and logs every change)::

    scheduled ──▶ open ──▶ live ──▶ ended ──▶ archived
        └──────────┴────────────────▶ ended          (called off before it went live)

- ``scheduled``: created for a case and a time; join links exist.
- ``open``: someone has arrived; parties wait in the waiting room.
- ``live``: the mediator admitted the first party; recording runs from this moment.
- ``ended``: the mediator ended it (or it was called off); nobody can join again.
- ``archived``: the recording is finalised (digests, signed manifest, and the court copy
  with its own signed record, or the reason it is missing).

:func:`check_transition` is the only judge of a move. Two places change a room's state, and
both ask it: :meth:`RoomLifecycle.set_state` (a hosted room's state in memory) and
``state.room_store.set_room_state`` (the stored state, which every writer goes through: the
hosted room and the finaliser). This module is pure (standard library and ``jiefen.errors``
only) so that ``state`` may import it, as ``state.case_store`` imports ``cases.status``.

Seats: the mediator, the applicant and the respondent always; up to two extra seats that the
mediator opens, when the room is opened or during the session (:func:`check_new_seat`): an
interpreter (on the mediator's side: they translate in private sessions too) or a party's
agent (on that party's side). Forwarding rule, enforced by the media server
(never by the page): a participant's media reaches another only if both are admitted, both are
in the current session group, and, for audio, the publisher is not muted by the mediator. In a
joint session the group is everyone; in a private session (背对背, caucus) with one side it is
the mediator's side plus that side, and everyone else is on hold: they neither see nor hear the
others, nor are seen or heard.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from jiefen.errors import InvalidTransition

log = logging.getLogger(__name__)


class RoomState(enum.StrEnum):
    SCHEDULED = "scheduled"
    OPEN = "open"
    LIVE = "live"
    ENDED = "ended"
    ARCHIVED = "archived"


ALLOWED_TRANSITIONS: dict[RoomState, frozenset[RoomState]] = {
    RoomState.SCHEDULED: frozenset({RoomState.OPEN, RoomState.ENDED}),
    RoomState.OPEN: frozenset({RoomState.LIVE, RoomState.ENDED}),
    RoomState.LIVE: frozenset({RoomState.ENDED}),
    RoomState.ENDED: frozenset({RoomState.ARCHIVED}),
    RoomState.ARCHIVED: frozenset(),
}


class RoomStateError(InvalidTransition):
    """A lifecycle change the rules do not allow; names both states."""

    def __init__(self, current: RoomState, wanted: RoomState) -> None:
        super().__init__("room", current.value, wanted.value)
        self.current = current
        self.wanted = wanted


def check_transition(current: RoomState, wanted: RoomState) -> None:
    """Pass if a room may move ``current`` -> ``wanted``; else raise :class:`RoomStateError`."""
    if wanted not in ALLOWED_TRANSITIONS[current]:
        raise RoomStateError(current, wanted)


class Side(enum.StrEnum):
    MEDIATOR = "mediator"
    APPLICANT = "applicant"
    RESPONDENT = "respondent"


class SeatRole(enum.StrEnum):
    MEDIATOR = "mediator"
    APPLICANT = "applicant"
    RESPONDENT = "respondent"
    INTERPRETER = "interpreter"
    APPLICANT_AGENT = "applicant_agent"
    RESPONDENT_AGENT = "respondent_agent"

    @property
    def side(self) -> Side:
        return _SIDES[self]

    @property
    def is_party(self) -> bool:
        return self in (SeatRole.APPLICANT, SeatRole.RESPONDENT)


_SIDES = {
    SeatRole.MEDIATOR: Side.MEDIATOR,
    SeatRole.INTERPRETER: Side.MEDIATOR,
    SeatRole.APPLICANT: Side.APPLICANT,
    SeatRole.APPLICANT_AGENT: Side.APPLICANT,
    SeatRole.RESPONDENT: Side.RESPONDENT,
    SeatRole.RESPONDENT_AGENT: Side.RESPONDENT,
}
BASE_SEATS = (SeatRole.MEDIATOR, SeatRole.APPLICANT, SeatRole.RESPONDENT)
EXTRA_SEATS = (SeatRole.INTERPRETER, SeatRole.APPLICANT_AGENT, SeatRole.RESPONDENT_AGENT)
MAX_EXTRA_SEATS = 2


def check_seats(seats: Iterable[SeatRole]) -> tuple[SeatRole, ...]:
    """The room's seats in a fixed order; the three base seats plus at most two extras."""
    chosen = set(seats)
    missing = [seat for seat in BASE_SEATS if seat not in chosen]
    if missing:
        raise ValueError(f"a room needs the seats {', '.join(missing)}")
    extras = [seat for seat in EXTRA_SEATS if seat in chosen]
    if len(extras) > MAX_EXTRA_SEATS:
        raise ValueError(f"a room has at most {MAX_EXTRA_SEATS} extra seats")
    return (*BASE_SEATS, *extras)


class SeatRefused(ValueError):
    """A seat the mediator may not open now; ``reason`` is a stable code (see
    :func:`check_new_seat`) that goes back to the mediator's page."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def check_new_seat(state: RoomState, seats: Iterable[SeatRole], seat: SeatRole) -> None:
    """Whether the mediator may open ``seat`` in a room in ``state`` that has ``seats``.

    Raises :class:`SeatRefused` with the reason: ``room_closed`` (the room has ended),
    ``not_extra_seat`` (only the extra seats can be opened), ``seat_taken`` (the room has it),
    ``too_many_seats`` (the room has its ``MAX_EXTRA_SEATS`` already).
    """
    current = set(seats)
    if state in (RoomState.ENDED, RoomState.ARCHIVED):
        raise SeatRefused("room_closed", f"the room is {state}")
    if seat not in EXTRA_SEATS:
        raise SeatRefused("not_extra_seat", f"{seat} is not an extra seat")
    if seat in current:
        raise SeatRefused("seat_taken", f"the room has the seat {seat} already")
    if sum(1 for extra in EXTRA_SEATS if extra in current) >= MAX_EXTRA_SEATS:
        raise SeatRefused("too_many_seats", f"a room has at most {MAX_EXTRA_SEATS} extra seats")


class RoomLifecycle:
    """Holds a room's state; :meth:`set_state` is the only way to change it."""

    def __init__(self, room_id: str, state: RoomState) -> None:
        self.room_id = room_id
        self._state = state

    @property
    def state(self) -> RoomState:
        return self._state

    def set_state(self, state: RoomState) -> None:
        """Move to ``state``, or raise :class:`RoomStateError` changing nothing."""
        check_transition(self._state, state)
        log.info("room %s: %s -> %s", self.room_id, self._state, state)
        self._state = state


@dataclass
class SessionView:
    """Who is in the room now, as the forwarding rule needs it."""

    admitted: set[SeatRole] = field(default_factory=set)
    muted: set[SeatRole] = field(default_factory=set)
    caucus: Side | None = None

    def in_session(self, seat: SeatRole) -> bool:
        """Whether ``seat`` is in the current session group (not on hold)."""
        if self.caucus is None:
            return True
        return seat.side in (Side.MEDIATOR, self.caucus)

    def may_forward(self, publisher: SeatRole, subscriber: SeatRole, kind: str) -> bool:
        """Whether ``publisher``'s ``kind`` ("audio"/"video") may reach ``subscriber``."""
        if publisher == subscriber:
            return False
        if publisher not in self.admitted or subscriber not in self.admitted:
            return False
        if not (self.in_session(publisher) and self.in_session(subscriber)):
            return False
        return not (kind == "audio" and publisher in self.muted)
