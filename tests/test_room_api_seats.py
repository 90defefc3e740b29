"""``POST /api/rooms/{room_id}/seats``: an extra seat opened through the rooms API reaches the
room's session wherever it is hosted.

Real servers on 127.0.0.1:0 with real Redis and PostgreSQL, real aiortc peers over the
signalling WebSocket. In one process (``--role all``) the seat is taken in at once; with a web
process and a media process (``--role web`` and ``--role media``, two apps sharing the database,
Redis and data directory as two processes do) it reaches the host through Redis, and a host
that missed the announcement takes the seat in when its person joins.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from mediation_rooms.room import RoomState, SeatRole
from state import room_store
from tests import test_room_timeline
from tests.conftest import DATABASE_ADMIN_URL, REDIS_URL
from tests.harness import ADMIN_TOKEN, RunningJiefen, running_jiefen
from tests.test_room_signalling import Client, admit_applicant, file_case, open_room, token_of
from tests.test_room_timeline import joiner, of, presence_of, timeline

# The signalling connections of a test, closed afterwards (the timeline tests' fixture).
clients = test_room_timeline.clients

pytestmark = pytest.mark.services

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def post_seat(
    jiefen: RunningJiefen, room_id: str, body: Any, *, headers: dict[str, str] = AUTH
) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with jiefen.session.post(
        f"{jiefen.url}/api/rooms/{room_id}/seats", data=data, headers=headers
    ) as response:
        answer: dict[str, Any] = await response.json()
        return response.status, answer


async def everyone_is_offered(room_id: str, seat: str, *connected: Client) -> None:
    """Each connected client gets a renegotiation carrying ``seat`` and answers it on the peer
    connection it has."""
    for client in connected:
        peer = client.peer
        assert await client.answer_offer() is peer
        offer = [m for m in client.messages if m["type"] == "offer"][-1]
        assert offer["renegotiation"] is True
        assert {(seat, "audio"), (seat, "video")} <= {
            (t["seat"], t["kind"]) for t in offer["tracks"]
        }


async def the_new_person_gets_in(
    join: Any, mediator: Client, link: str, seat: str, name: str
) -> Client:
    person: Client = await join(token_of(link))
    assert (await person.next("welcome"))["name"] == name
    await person.next("waiting")
    await presence_of(mediator, seat, waiting=True)
    await mediator.send("admit", seat=seat)
    await person.answer_offer()
    return person


@pytest.mark.timeout(120)
async def test_a_seat_opened_through_the_api_joins_the_live_session(
    jiefen: RunningJiefen, clients: list[Client]
) -> None:
    opened = await open_room(jiefen, await file_case(jiefen))
    room_id, links = opened["room_id"], opened["links"]
    join = joiner(jiefen, clients)
    mediator, applicant = await admit_applicant(join, links, at_least=10)

    status, answer = await post_seat(jiefen, room_id, {"seat": "interpreter", "name": " 阿依 "})
    assert status == 201, answer
    assert (answer["seat"], answer["name"]) == ("interpreter", "阿依")
    assert answer["link"].startswith(f"{jiefen.settings.resolved_public_url}/join#")
    # Hosted here: everyone connected has been offered the seat by the time of the answer.
    await everyone_is_offered(room_id, "interpreter", mediator, applicant)
    listed = await presence_of(mediator, "interpreter", present=False)
    assert listed["name"] == "阿依"
    assert not any(m["type"] == "seat_opened" for m in mediator.messages)  # the link went back
    opening = of(timeline(jiefen, room_id), "interpreter", "seat_opened")
    assert [e["by"] for e in opening] == ["api"]

    interpreter = await the_new_person_gets_in(
        join, mediator, answer["link"], "interpreter", "阿依"
    )
    for client, seat in ((mediator, "interpreter"), (interpreter, "applicant")):
        assert client.peer is not None
        await _frames(client, seat)


@pytest.mark.timeout(60)
async def test_the_api_refuses_clearly(jiefen: RunningJiefen) -> None:
    opened = await open_room(jiefen, await file_case(jiefen), extra_seats={"interpreter": "阿依"})
    room_id = opened["room_id"]
    ok = {"seat": "applicant_agent", "name": "李律师"}

    assert (await post_seat(jiefen, room_id, ok, headers={}))[0] == 403
    wrong = {"Authorization": "Bearer nope"}
    assert (await post_seat(jiefen, room_id, ok, headers=wrong))[0] == 403
    for body in (
        b"not json",
        [],
        {"name": "李律师"},
        {"seat": 5, "name": "李律师"},
        {"seat": "nobody", "name": "李律师"},
        {"seat": "applicant_agent"},
        {"seat": "applicant_agent", "name": " \u202e "},
        {"seat": "applicant_agent", "name": "李" * 65},
        {"seat": "applicant_agent", "name": ["李律师"]},
    ):
        status, answer = await post_seat(jiefen, room_id, body)
        assert (status, answer["error"]) == (400, "invalid_request"), body
        assert answer["detail"]
    assert await post_seat(jiefen, "rm-none", ok) == (404, {"error": "unknown_room"})
    for body, reason in (
        ({"seat": "applicant", "name": "张三"}, "not_extra_seat"),
        ({"seat": "interpreter", "name": "阿依"}, "seat_taken"),
    ):
        status, answer = await post_seat(jiefen, room_id, body)
        assert (status, answer["error"]) == (409, reason), answer
    assert (await post_seat(jiefen, room_id, ok))[0] == 201
    status, answer = await post_seat(jiefen, room_id, {"seat": "respondent_agent", "name": "王"})
    assert (status, answer["error"]) == (409, "too_many_seats")
    room = await room_store.get_room(jiefen.services.db, room_id)
    assert room is not None
    assert sorted(s.seat for s in room.seats) == sorted(
        ["mediator", "applicant", "respondent", "interpreter", "applicant_agent"]
    )

    # A room called off takes no seat.
    other = (await open_room(jiefen, await file_case(jiefen)))["room_id"]
    assert await room_store.set_room_state(
        jiefen.services.db,
        other,
        expected=RoomState.SCHEDULED,
        new=RoomState.ENDED,
        now=datetime.now(UTC),
    )
    status, answer = await post_seat(jiefen, other, ok)
    assert (status, answer["error"]) == (409, "room_closed")

    # The database gone: the caller is told to try again, nothing half-done.
    database = jiefen.settings.resolved_database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(DATABASE_ADMIN_URL, timeout=5)
    try:
        await admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
    finally:
        await admin.close()
    status, answer = await post_seat(jiefen, other, {"seat": "interpreter", "name": "阿依"})
    assert (status, answer["error"]) == (503, "storage_unavailable")


@pytest.fixture
async def web(pg_database_url: str, redis_prefix: str, tmp_path: Path) -> AsyncIterator[Any]:
    async with running_jiefen(
        database_url=pg_database_url,
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        data_dir=tmp_path,
        admin_api_token=ADMIN_TOKEN,
        role="web",
    ) as running:
        yield running


@pytest.fixture
async def media(
    web: RunningJiefen, pg_database_url: str, redis_prefix: str, tmp_path: Path
) -> AsyncIterator[Any]:
    async with running_jiefen(
        database_url=pg_database_url,
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        data_dir=tmp_path,
        role="media",
        public_url=web.url,  # join links of seats opened in the session lead to the web
    ) as running:
        yield running


@pytest.mark.timeout(120)
async def test_a_seat_opened_on_the_web_process_reaches_the_media_process_hosting_the_room(
    web: RunningJiefen, media: RunningJiefen, clients: list[Client]
) -> None:
    opened = await open_room(web, await file_case(web))
    room_id, links = opened["room_id"], opened["links"]
    join = joiner(media, clients)
    mediator, applicant = await admit_applicant(join, links, at_least=10)
    assert room_id in media.services.hub.live_rooms and not web.services.hub.live_rooms

    status, answer = await post_seat(web, room_id, {"seat": "respondent_agent", "name": "王律师"})
    assert status == 201, answer
    # Told through Redis, the host offers the seat to everyone connected, before anyone joins.
    await everyone_is_offered(room_id, "respondent_agent", mediator, applicant)
    await presence_of(applicant, "respondent_agent", present=False)
    assert [e["by"] for e in of(timeline(media, room_id), "respondent_agent", "seat_opened")] == [
        "api"
    ]
    agent = await the_new_person_gets_in(
        join, mediator, answer["link"], "respondent_agent", "王律师"
    )
    await _frames(agent, "mediator")


@pytest.mark.timeout(120)
async def test_a_host_that_missed_the_announcement_takes_the_seat_in_when_its_person_joins(
    web: RunningJiefen, media: RunningJiefen, clients: list[Client]
) -> None:
    opened = await open_room(web, await file_case(web))
    room_id, links = opened["room_id"], opened["links"]
    join = joiner(media, clients)
    mediator, applicant = await admit_applicant(join, links, at_least=10)

    # Stored without the announcement (as when Redis failed the publish, or the host was
    # resubscribing): the hosted room does not know the seat yet.
    seat = await web.services.rooms.open_seat(
        room_id, SeatRole.INTERPRETER, "阿依", now=datetime.now(UTC)
    )
    assert SeatRole.INTERPRETER not in media.services.hub.live_rooms[room_id].seats
    interpreter: Client = await join(token_of(seat.link))
    assert (await interpreter.next("welcome"))["name"] == "阿依"
    await interpreter.next("waiting")
    await everyone_is_offered(room_id, "interpreter", mediator, applicant)
    await mediator.send("admit", seat="interpreter")
    await interpreter.answer_offer()
    await _frames(interpreter, "applicant")
    await _frames(applicant, "interpreter")


async def _frames(client: Client, seat: str) -> None:
    from tests.test_room_signalling import wait_frames

    await wait_frames(client, seat, 10, wait_s=20)


@pytest.mark.timeout(60)
async def test_a_room_opened_with_extra_seats_takes_their_names_by_the_same_rule(
    jiefen: RunningJiefen,
) -> None:
    """``POST /api/rooms``'s ``extra_seats`` are named as a seat opened later is: no control or
    format characters (a right-to-left override makes a name read as another), 1 to 64."""
    case_no = await file_case(jiefen)

    async def post_room(extra_seats: Any) -> tuple[int, dict[str, Any]]:
        async with jiefen.session.post(
            f"{jiefen.url}/api/rooms",
            json={"case_no": case_no, "extra_seats": extra_seats},
            headers=AUTH,
        ) as response:
            answer: dict[str, Any] = await response.json()
            return response.status, answer

    for names in ({"interpreter": " \u202e "}, {"interpreter": "李" * 65}, {"interpreter": 5}):
        status, answer = await post_room(names)
        assert (status, answer["error"]) == (400, "invalid_request"), names
    status, answer = await post_room({"interpreter": " 阿\u202e依 "})
    assert status == 201, answer
    room = await room_store.get_room(jiefen.services.db, answer["room_id"])
    assert room is not None
    assert room.seat("interpreter").person_name == "阿依"  # type: ignore[union-attr]
