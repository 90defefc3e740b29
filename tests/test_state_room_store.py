"""``state.room_store`` on both databases: adding a seat to a room is a compare-and-set, and so
is a change of its state, which the room's rules check first."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from mediation_rooms.room import ALLOWED_TRANSITIONS, RoomState, RoomStateError
from state import room_store
from state.db import create_engine, migrate
from state.room_store import SeatRecord
from tests.test_state_case_store import NOW, file_case

BASE = ("mediator", "applicant", "respondent")


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    migrate(database_url)
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


def seat(name: str) -> SeatRecord:
    return SeatRecord(name, f"{name} 的名字", f"nonce-{name}", None, None, NOW + timedelta(days=1))


async def test_a_seat_is_added_only_to_the_room_as_the_caller_read_it(db: AsyncEngine) -> None:
    case = await file_case(db)
    room = await room_store.create_room(
        db,
        room_id=room_store.new_room_id(),
        case_no=case.case_no,
        scheduled_at=NOW,
        video_codec="VP8",
        seats=[seat(name) for name in BASE],
        state="open",
        now=NOW,
    )

    async def add(
        name: str, state: str, seats: tuple[str, ...], room_id: str = room.room_id
    ) -> bool:
        return await room_store.add_seat(
            db, room_id, seat(name), expected_state=state, expected_seats=seats
        )

    assert await add("interpreter", "open", BASE)
    stored = await room_store.get_room(db, room.room_id)
    assert stored is not None and stored.seat("interpreter") == seat("interpreter")
    # Read before the interpreter was added: refused, nothing written.
    assert not await add("applicant_agent", "open", BASE)
    # The room moved on since it was read.
    assert not await add("applicant_agent", "live", (*BASE, "interpreter"))
    assert not await add("interpreter", "open", BASE, room_id="rm-none")
    stored = await room_store.get_room(db, room.room_id)
    assert stored is not None
    assert sorted(s.seat for s in stored.seats) == sorted((*BASE, "interpreter"))


async def _room_in(db: AsyncEngine, case_no: str, state: RoomState) -> str:
    room = await room_store.create_room(
        db,
        room_id=room_store.new_room_id(),
        case_no=case_no,
        scheduled_at=NOW,
        video_codec="VP8",
        seats=[seat(name) for name in BASE],
        state=state.value,
        now=NOW,
    )
    return room.room_id


async def test_the_stored_state_only_makes_the_moves_the_rules_allow(db: AsyncEngine) -> None:
    """``set_room_state`` is the one write path of a stored room's state: a move the rules of
    ``mediation_rooms.room`` forbid is refused, naming both states, and nothing is written."""
    case = await file_case(db)
    later = NOW + timedelta(hours=1)
    for old, new in itertools.product(RoomState, RoomState):
        room_id = await _room_in(db, case.case_no, old)
        if new in ALLOWED_TRANSITIONS[old]:
            assert await room_store.set_room_state(db, room_id, expected=old, new=new, now=later)
            continue
        with pytest.raises(RoomStateError) as refused:
            await room_store.set_room_state(db, room_id, expected=old, new=new, now=later)
        assert (refused.value.current, refused.value.wanted) == (old, new)
        assert f"{old.value} -> {new.value}" in str(refused.value)
        stored = await room_store.get_room(db, room_id)
        assert stored is not None
        assert (stored.state, stored.live_at, stored.ended_at) == (old.value, None, None)


async def test_a_room_moves_only_from_the_state_it_is_in(db: AsyncEngine) -> None:
    case = await file_case(db)
    room_id = await _room_in(db, case.case_no, RoomState.SCHEDULED)
    moves = [
        (RoomState.SCHEDULED, RoomState.OPEN, NOW + timedelta(minutes=1)),
        (RoomState.OPEN, RoomState.LIVE, NOW + timedelta(minutes=2)),
        (RoomState.LIVE, RoomState.ENDED, NOW + timedelta(minutes=3)),
    ]
    for old, new, at in moves:
        # Allowed, but the room is not in that state (yet, or any more): nothing changes.
        assert not await room_store.set_room_state(
            db, room_id, expected=RoomState.ENDED, new=RoomState.ARCHIVED, now=at
        )
        assert await room_store.set_room_state(db, room_id, expected=old, new=new, now=at)
        # The same move twice (two processes racing): the second finds it made.
        assert not await room_store.set_room_state(db, room_id, expected=old, new=new, now=at)
    stored = await room_store.get_room(db, room_id)
    assert stored is not None and stored.state == "ended"
    assert stored.live_at == NOW + timedelta(minutes=2)
    assert stored.ended_at == NOW + timedelta(minutes=3)
    assert await room_store.ended_room_ids(db) == [room_id]
    assert not await room_store.set_room_state(
        db, "rm-none", expected=RoomState.ENDED, new=RoomState.ARCHIVED, now=NOW
    )
