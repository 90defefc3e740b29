"""``state.room_store`` on both databases: adding a seat to a room is a compare-and-set."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

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
