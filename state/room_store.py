"""Reading and writing mediation rooms and their seats (same contract as ``state.case_store``).

Room states are the string values of ``mediation_rooms.room.RoomState``.
:func:`set_room_state` is the one place a stored room changes state: it refuses, writing
nothing, a move the room's rules (``mediation_rooms.room.check_transition``, a pure module, as
``state.case_store`` uses ``cases.status``) do not allow, and it is a compare-and-set
(``UPDATE … WHERE state = expected``) so that two processes racing to move a room (say, two
admits at once) change it once, and a room is never moved from a state it is not in.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from mediation_rooms.room import RoomState, check_transition
from state._sql import table_of
from state.db import storage_errors
from state.models import Case, MediationRoom, Party, RoomSeat

log = logging.getLogger(__name__)

_ROOMS = table_of(MediationRoom)
_SEATS = table_of(RoomSeat)
_CASES = table_of(Case)
_PARTIES = table_of(Party)


class UnknownCase(LookupError):
    """No case has that number."""


class UnknownRoom(LookupError):
    """No room has that id."""


@dataclass(frozen=True, slots=True)
class SeatRecord:
    seat: str
    person_name: str
    nonce: str
    identity_check: str | None
    identity_digest: str | None
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class RoomRecord:
    room_id: str
    case_no: str
    session_no: int
    state: str
    scheduled_at: datetime
    video_codec: str
    live_at: datetime | None
    ended_at: datetime | None
    seats: tuple[SeatRecord, ...]

    def seat(self, name: str) -> SeatRecord | None:
        return next((seat for seat in self.seats if seat.seat == name), None)


@dataclass(frozen=True, slots=True)
class PartyContact:
    """What a room needs of a party: the name, and the answers to the identity re-check."""

    role: str
    name: str
    phone: str | None
    id_number_ciphertext: str | None
    #: The WeChat openid the party filed from (the applicant's), for sending the join link.
    openid: str | None


def new_room_id() -> str:
    return "rm" + secrets.token_hex(8)


async def party_contacts(db: AsyncEngine, case_no: str) -> dict[str, PartyContact]:
    """The case's parties by role; raises ``UnknownCase``."""
    with storage_errors("read the parties"):
        async with db.begin() as connection:
            case = (
                await connection.execute(
                    sa.select(_CASES.c.id, _CASES.c.applicant_openid).where(
                        _CASES.c.case_no == case_no
                    )
                )
            ).one_or_none()
            if case is None:
                raise UnknownCase(case_no)
            case_id, applicant_openid = case
            rows = (
                await connection.execute(
                    sa.select(_PARTIES).where(_PARTIES.c.case_id == case_id).order_by(_PARTIES.c.id)
                )
            ).mappings()
            return {
                row["role"]: PartyContact(
                    row["role"],
                    row["name"],
                    row["phone"],
                    row["id_number_ciphertext"],
                    applicant_openid if row["role"] == "applicant" else None,
                )
                for row in rows
            }


async def create_room(
    db: AsyncEngine,
    *,
    room_id: str,
    case_no: str,
    scheduled_at: datetime,
    video_codec: str,
    seats: Sequence[SeatRecord],
    state: str,
    now: datetime,
) -> RoomRecord:
    """Store a new session of the case (numbered after its last one) with its seats."""
    with storage_errors("open the room"):
        async with db.begin() as connection:
            case_id = (
                await connection.execute(sa.select(_CASES.c.id).where(_CASES.c.case_no == case_no))
            ).scalar_one_or_none()
            if case_id is None:
                raise UnknownCase(case_no)
            last = (
                await connection.execute(
                    sa.select(sa.func.max(_ROOMS.c.session_no)).where(_ROOMS.c.case_id == case_id)
                )
            ).scalar_one_or_none()
            session_no = (last or 0) + 1
            await connection.execute(
                sa.insert(_ROOMS).values(
                    id=room_id,
                    case_id=case_id,
                    session_no=session_no,
                    state=state,
                    scheduled_at=scheduled_at,
                    video_codec=video_codec,
                    created_at=now,
                    updated_at=now,
                )
            )
            await connection.execute(
                sa.insert(_SEATS), [_seat_row(room_id, seat) for seat in seats]
            )
    return RoomRecord(
        room_id=room_id,
        case_no=case_no,
        session_no=session_no,
        state=state,
        scheduled_at=scheduled_at,
        video_codec=video_codec,
        live_at=None,
        ended_at=None,
        seats=tuple(seats),
    )


async def add_seat(
    db: AsyncEngine,
    room_id: str,
    seat: SeatRecord,
    *,
    expected_state: str,
    expected_seats: Collection[str],
) -> bool:
    """Add ``seat`` to the room if it is still in ``expected_state`` with exactly the seats
    ``expected_seats``; False if it is not (it changed since the caller read it, or is gone).

    A compare-and-set like :func:`set_room_state`: the caller checks its rules against the
    room it read, and two processes adding seats at once cannot both pass on the same room.
    """
    with storage_errors("add a seat"):
        async with db.begin() as connection:
            state = (
                await connection.execute(
                    sa.select(_ROOMS.c.state).where(_ROOMS.c.id == room_id).with_for_update()
                )
            ).scalar_one_or_none()
            if state != expected_state:
                return False
            seats = (
                await connection.execute(
                    sa.select(_SEATS.c.seat).where(_SEATS.c.room_id == room_id)
                )
            ).scalars()
            if set(seats) != set(expected_seats):
                return False
            await connection.execute(sa.insert(_SEATS).values(**_seat_row(room_id, seat)))
            return True


def _seat_row(room_id: str, seat: SeatRecord) -> dict[str, object]:
    return {
        "room_id": room_id,
        "seat": seat.seat,
        "person_name": seat.person_name,
        "nonce": seat.nonce,
        "identity_check": seat.identity_check,
        "identity_digest": seat.identity_digest,
        "expires_at": seat.expires_at,
    }


async def get_room(db: AsyncEngine, room_id: str) -> RoomRecord | None:
    with storage_errors("read the room"):
        async with db.begin() as connection:
            row = (
                (
                    await connection.execute(
                        sa.select(_ROOMS, _CASES.c.case_no)
                        .join(_CASES, _CASES.c.id == _ROOMS.c.case_id)
                        .where(_ROOMS.c.id == room_id)
                    )
                )
                .mappings()
                .one_or_none()
            )
            if row is None:
                return None
            seats = (
                await connection.execute(sa.select(_SEATS).where(_SEATS.c.room_id == room_id))
            ).mappings()
            return RoomRecord(
                room_id=row["id"],
                case_no=row["case_no"],
                session_no=row["session_no"],
                state=row["state"],
                scheduled_at=row["scheduled_at"],
                video_codec=row["video_codec"],
                live_at=row["live_at"],
                ended_at=row["ended_at"],
                seats=tuple(
                    SeatRecord(
                        seat=s["seat"],
                        person_name=s["person_name"],
                        nonce=s["nonce"],
                        identity_check=s["identity_check"],
                        identity_digest=s["identity_digest"],
                        expires_at=s["expires_at"],
                    )
                    for s in seats
                ),
            )


async def rooms_of_case(db: AsyncEngine, case_no: str) -> list[RoomRecord]:
    """Every session of the case, oldest first."""
    with storage_errors("list the rooms"):
        async with db.begin() as connection:
            ids = (
                await connection.execute(
                    sa.select(_ROOMS.c.id)
                    .join(_CASES, _CASES.c.id == _ROOMS.c.case_id)
                    .where(_CASES.c.case_no == case_no)
                    .order_by(_ROOMS.c.session_no)
                )
            ).scalars()
            room_ids = list(ids)
    rooms = [await get_room(db, room_id) for room_id in room_ids]
    return [room for room in rooms if room is not None]


@dataclass(frozen=True, slots=True)
class RoomListing:
    """One row of :func:`list_rooms`: a room without its seats."""

    room_id: str
    case_no: str
    session_no: int
    state: str
    scheduled_at: datetime
    ended_at: datetime | None


async def list_rooms(
    db: AsyncEngine,
    *,
    states: Collection[RoomState] = (),
    case_no: str | None = None,
    limit: int = 200,
) -> list[RoomListing]:
    """Rooms, the most recently scheduled first: those in ``states`` (every state when empty)
    and of ``case_no`` (every case when ``None``), at most ``limit``."""
    query = (
        sa.select(
            _ROOMS.c.id,
            _CASES.c.case_no,
            _ROOMS.c.session_no,
            _ROOMS.c.state,
            _ROOMS.c.scheduled_at,
            _ROOMS.c.ended_at,
        )
        .join(_CASES, _CASES.c.id == _ROOMS.c.case_id)
        .order_by(_ROOMS.c.scheduled_at.desc(), _ROOMS.c.id)
        .limit(limit)
    )
    if states:
        query = query.where(_ROOMS.c.state.in_([RoomState(state).value for state in states]))
    if case_no is not None:
        query = query.where(_CASES.c.case_no == case_no)
    with storage_errors("list the rooms"):
        async with db.begin() as connection:
            rows = (await connection.execute(query)).all()
    return [RoomListing(*row) for row in rows]


async def ended_room_ids(db: AsyncEngine) -> list[str]:
    """Rooms in state ``ended`` (their recording not yet archived), the earliest ended first."""
    with storage_errors("list the ended rooms"):
        async with db.begin() as connection:
            ids = await connection.execute(
                sa.select(_ROOMS.c.id)
                .where(_ROOMS.c.state == RoomState.ENDED.value)
                .order_by(_ROOMS.c.ended_at)
            )
            return list(ids.scalars())


async def set_room_state(
    db: AsyncEngine, room_id: str, *, expected: RoomState, new: RoomState, now: datetime
) -> bool:
    """Move the room from ``expected`` to ``new``; False if it was not in ``expected`` (or is
    unknown). Raises ``RoomStateError`` (an ``InvalidTransition``) before touching the database
    when the rules do not allow ``expected`` -> ``new``: since the row changes only while it is
    in ``expected``, no stored room ever makes a move the rules forbid."""
    expected, new = RoomState(expected), RoomState(new)  # a state's stored value works too
    check_transition(expected, new)
    values: dict[str, object] = {"state": new.value, "updated_at": now}
    if new is RoomState.LIVE:
        values["live_at"] = now
    if new is RoomState.ENDED:
        values["ended_at"] = now
    with storage_errors("change the room"):
        async with db.begin() as connection:
            result = await connection.execute(
                sa.update(_ROOMS)
                .where(_ROOMS.c.id == room_id, _ROOMS.c.state == expected.value)
                .values(**values)
            )
            moved = bool(result.rowcount)
    if moved:
        log.info("room %s (stored): %s -> %s", room_id, expected.value, new.value)
    return moved
