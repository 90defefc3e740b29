"""What a room's timeline (evidence for a court) and its presence say about the people in it,
through the real signalling server: arrivals before the room went live at their own time, a
return after a drop as ``reconnected`` with its gap (on another host too), each person's own
microphone and camera switches, and the mediator's mute told to the person muted.

Real aiohttp server on 127.0.0.1:0, real Redis and PostgreSQL, real aiortc peers. The rooms
are not ended (their timeline is read while live): no finalisation runs.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from mediation_rooms import texts
from tests.conftest import REDIS_URL
from tests.harness import ADMIN_TOKEN, RunningJiefen, eventually, running_jiefen
from tests.test_room_signalling import (
    RESPONDENT_PHONE,
    Client,
    admit_applicant,
    file_case,
    open_room,
    token_of,
    wait_frames,
)
from tests.test_state_case_store import ID_NUMBER

pytestmark = pytest.mark.services

Join = Callable[..., Awaitable[Client]]


@pytest.fixture
async def quick_release(
    pg_database_url: str, redis_prefix: str, tmp_path: Path
) -> AsyncIterator[RunningJiefen]:
    """A Jiefen that lets a room go half a second after the last person left."""
    async with running_jiefen(
        database_url=pg_database_url,
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        data_dir=tmp_path,
        admin_api_token=ADMIN_TOKEN,
        room_empty_grace_s=0.5,
    ) as running:
        yield running


def joiner(jiefen: RunningJiefen, clients: list[Client]) -> Join:
    async def join(token: str, identity: str | None = None) -> Client:
        client = Client(await jiefen.session.ws_connect(f"{jiefen.url}/rooms/ws"))
        clients.append(client)
        await client.send_join(token, identity)
        return client

    return join


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    opened: list[Client] = []
    yield opened
    for client in opened:
        await client.close()


def timeline(jiefen: RunningJiefen, room_id: str) -> list[dict[str, Any]]:
    path = jiefen.settings.recordings_dir / room_id / "timeline.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def of(events: list[dict[str, Any]], seat: str, *kinds: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("seat") == seat and (not kinds or e["event"] in kinds)]


async def presence_of(client: Client, seat: str, **wanted: object) -> dict[str, Any]:
    """The first presence (from now on) in which ``seat`` has the ``wanted`` values."""
    while True:
        presence = await client.next("presence")
        for person in presence["participants"]:
            if person["seat"] == seat and all(person[k] == v for k, v in wanted.items()):
                return dict(person)


@pytest.mark.timeout(120)
async def test_arrivals_before_the_room_went_live_are_written_at_their_own_time(
    jiefen: RunningJiefen, clients: list[Client]
) -> None:
    opened = await open_room(jiefen, await file_case(jiefen))
    room_id, links = opened["room_id"], opened["links"]
    join = joiner(jiefen, clients)
    mediator_at = time.monotonic()
    mediator = await join(token_of(links["mediator"]))
    await mediator.answer_offer()
    mediator_in = time.monotonic()  # its joined was recorded before its offer was sent
    await asyncio.sleep(0.4)
    applicant_at = time.monotonic()
    applicant = await join(token_of(links["applicant"]), ID_NUMBER[-6:])
    await applicant.next("waiting")
    # The respondent looks in, and drops out before the session starts.
    respondent = await join(token_of(links["respondent"]), RESPONDENT_PHONE)
    await respondent.next("waiting")
    await respondent.close()
    await presence_of(mediator, "respondent", present=False)
    await asyncio.sleep(0.6)
    admitted_at = time.monotonic()
    await mediator.send("admit", seat="applicant")
    await applicant.answer_offer()
    live_by = time.monotonic()  # the room went live before the applicant's offer was sent
    await wait_frames(mediator, "applicant", 10)

    events = timeline(jiefen, room_id)
    names = [e["event"] for e in events]
    assert names[0] == "recording_started" and events[0]["t_ms"] <= 50
    admitted = names.index("admitted")
    early = events[1:admitted]
    # Everything that happened before the room went live, in the order it happened, marked
    # as such, at its own (negative) time on the room clock.
    assert early and all(e.get("before_live") is True for e in early)
    assert [e["t_ms"] for e in early] == sorted(e["t_ms"] for e in early)
    assert all(e["t_ms"] < 0 for e in early)
    assert not any(e.get("before_live") for e in events[admitted:])
    assert [(e["event"], e["seat"]) for e in early if e["event"] in ("joined", "left")] == [
        ("joined", "mediator"),
        ("joined", "applicant"),
        ("joined", "respondent"),
        ("left", "respondent"),
    ]
    joined = {e["seat"]: e["t_ms"] for e in early if e["event"] == "joined"}
    # The room clock's origin is the admission: the times before it are as long ago as that.
    # Bounded by what the test saw on either side of each moment, not by a guess at how long
    # the server takes (a loaded machine takes longer); 20 ms for the clocks' rounding.
    slack_ms = 20

    def between(t_ms: int, earliest: float, latest: float) -> bool:
        return (earliest - live_by) * 1000 - slack_ms <= t_ms <= (latest - admitted_at) * 1000

    assert between(joined["mediator"], mediator_at, mediator_in), (joined, mediator_in)
    assert between(joined["applicant"], applicant_at, admitted_at), joined
    assert joined["applicant"] - joined["mediator"] >= 400
    consents = {e["seat"]: e for e in early if e["event"] == "consented"}
    assert consents["applicant"]["recording"] is True
    assert consents["applicant"]["identity"] == "verified"
    assert events[admitted]["t_ms"] >= 0


@pytest.mark.timeout(120)
async def test_a_return_after_a_drop_is_a_reconnection_with_its_gap(
    jiefen: RunningJiefen, clients: list[Client]
) -> None:
    opened = await open_room(jiefen, await file_case(jiefen))
    room_id, links = opened["room_id"], opened["links"]
    join = joiner(jiefen, clients)
    mediator, applicant = await admit_applicant(join, links, at_least=10)

    closing_at = time.monotonic()  # the departure is recorded after this
    await applicant.close()
    await presence_of(mediator, "applicant", present=False)
    await asyncio.sleep(0.5)  # the departure was recorded before this
    back = await join(token_of(links["applicant"]), ID_NUMBER[-6:])
    await back.answer_offer()
    away_ms = (time.monotonic() - closing_at) * 1000  # the return was recorded before this
    await wait_frames(mediator, "applicant", 10)
    # A second device takes the seat over: no gap at all.
    second = await join(token_of(links["applicant"]), ID_NUMBER[-6:])
    await back.next("replaced")
    await second.answer_offer()

    events = of(timeline(jiefen, room_id), "applicant", "joined", "left", "reconnected")
    assert [e["event"] for e in events] == ["joined", "left", "reconnected", "reconnected"]
    assert 500 <= events[2]["gap_ms"] <= away_ms + 5, (events, away_ms)
    assert events[2]["gap_ms"] <= events[2]["t_ms"] - events[1]["t_ms"] + 5
    assert events[3]["gap_ms"] == 0
    # Consent is recorded at every arrival.
    assert len(of(timeline(jiefen, room_id), "applicant", "consented")) == 3


@pytest.mark.timeout(120)
async def test_a_reconnection_is_known_for_one_on_another_host(
    quick_release: RunningJiefen, clients: list[Client]
) -> None:
    jiefen = quick_release
    hub = jiefen.services.hub
    opened = await open_room(jiefen, await file_case(jiefen))
    room_id, links = opened["room_id"], opened["links"]
    join = joiner(jiefen, clients)
    mediator, applicant = await admit_applicant(join, links, at_least=10)

    # Everyone leaves; the room is let go, its state in Redis only; the next join hosts it anew.
    await applicant.close()
    await mediator.close()
    deadline = time.monotonic() + 10
    while room_id in hub.live_rooms:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    mediator = await join(token_of(links["mediator"]))
    await mediator.answer_offer()
    applicant = await join(token_of(links["applicant"]), ID_NUMBER[-6:])
    await applicant.answer_offer()
    await wait_frames(mediator, "applicant", 10)

    # The host is taken for dead while both are in (it stops without saving anything): when
    # they left it is not known; that they were here before is.
    await hub.lost(room_id)
    for client in (mediator, applicant):
        await client.next("moved")
        await client.close()
    mediator = await join(token_of(links["mediator"]))
    await mediator.answer_offer()
    applicant = await join(token_of(links["applicant"]), ID_NUMBER[-6:])
    await applicant.answer_offer()

    events = timeline(jiefen, room_id)
    for seat in ("mediator", "applicant"):
        arrivals = of(events, seat, "joined", "reconnected")
        assert [e["event"] for e in arrivals] == ["joined", "reconnected", "reconnected"], seat
        let_go, lost = arrivals[1], arrivals[2]
        assert isinstance(let_go["gap_ms"], int) and let_go["gap_ms"] >= 500, let_go
        assert lost["gap_ms"] is None, lost


@pytest.mark.timeout(120)
async def test_a_persons_own_microphone_and_camera_are_recorded_and_shown(
    jiefen: RunningJiefen, clients: list[Client]
) -> None:
    opened = await open_room(jiefen, await file_case(jiefen))
    room_id, links = opened["room_id"], opened["links"]
    join = joiner(jiefen, clients)
    mediator = await join(token_of(links["mediator"]))
    await mediator.answer_offer()
    before = await presence_of(mediator, "mediator", present=True)
    assert (before["audio_off"], before["video_off"]) == (False, False)  # nothing said yet

    # Only after joining; with both fields, both booleans.
    early = Client(await jiefen.session.ws_connect(f"{jiefen.url}/rooms/ws"))
    clients.append(early)
    await early.send("media_state", audio=False, video=False)
    assert (await early.next("error"))["code"] == "join_first"
    applicant = await join(token_of(links["applicant"]), ID_NUMBER[-6:])
    await applicant.next("waiting")
    for bad in ({"audio": "off", "video": True}, {"audio": False}, {"video": None}):
        await applicant.send("media_state", **bad)
        assert (await applicant.next("error"))["code"] == "invalid_field", bad

    # In the waiting room, the applicant switches their microphone off.
    await applicant.send("media_state", audio=False, video=True)
    shown = await presence_of(mediator, "applicant", audio_off=True)
    assert shown["video_off"] is False and shown["muted"] is False
    await mediator.send("admit", seat="applicant")
    await applicant.answer_offer()
    # Said again after a reconnect: the same, so nothing new; then the camera goes off too.
    await applicant.send("media_state", audio=False, video=True)
    await applicant.send("media_state", audio=False, video=False)
    shown = await presence_of(applicant, "applicant", video_off=True)
    assert shown["audio_off"] is True
    await applicant.send("media_state", audio=True, video=False)
    await presence_of(mediator, "applicant", audio_off=False, video_off=True)

    async def switches() -> list[dict[str, Any]]:
        found = of(timeline(jiefen, room_id), "applicant", "media_state")
        return found if len(found) >= 3 else []

    recorded = await eventually(switches)
    assert [(e["audio"], e["video"], e["by"]) for e in recorded] == [
        (False, True, "self"),
        (False, False, "self"),
        (True, False, "self"),
    ]
    assert recorded[0]["before_live"] is True and recorded[0]["t_ms"] < 0
    assert "before_live" not in recorded[1] and recorded[1]["t_ms"] >= 0
    # Kept in the room's live state, where another host picks it up.
    raw = await jiefen.services.redis.get(jiefen.services.hub.live_key(room_id))
    assert json.loads(raw)["media_state"]["applicant"] == {"audio": True, "video": False}


@pytest.mark.timeout(120)
async def test_the_person_the_mediator_mutes_is_told(
    jiefen: RunningJiefen, clients: list[Client]
) -> None:
    opened = await open_room(jiefen, await file_case(jiefen))
    links = opened["links"]
    join = joiner(jiefen, clients)
    mediator, applicant = await admit_applicant(join, links, at_least=10)

    await mediator.send("mute", seat="applicant", muted=True)
    assert (await applicant.next("notice"))["message"] == texts.MUTED_BY_MEDIATOR
    assert "静音" in texts.MUTED_BY_MEDIATOR
    await presence_of(mediator, "applicant", muted=True)
    # Coming back still muted, they are told again.
    await applicant.close()
    await presence_of(mediator, "applicant", present=False)
    applicant = await join(token_of(links["applicant"]), ID_NUMBER[-6:])
    await applicant.answer_offer()
    assert (await applicant.next("notice"))["message"] == texts.MUTED_BY_MEDIATOR
    await mediator.send("mute", seat="applicant", muted=False)
    assert (await applicant.next("notice"))["message"] == texts.UNMUTED_BY_MEDIATOR
    await presence_of(mediator, "applicant", muted=False)
    # The mediator is told nothing about their own controls.
    assert not any(m["type"] == "notice" for m in mediator.messages)


@pytest.mark.timeout(120)
async def test_a_redis_outage_during_the_session_throws_nobody_out(
    jiefen: RunningJiefen, clients: list[Client]
) -> None:
    """Media needs no Redis, and neither does a message that changes the presence: while
    Redis cannot be reached the room goes on in memory, and writes its state once it can."""
    from bot.bench_webhook import free_port

    opened = await open_room(jiefen, await file_case(jiefen))
    room_id, links = opened["room_id"], opened["links"]
    join = joiner(jiefen, clients)
    mediator, applicant = await admit_applicant(join, links, at_least=10)
    hub = jiefen.services.hub
    reachable = hub.redis
    # Redis gone (nothing listens on that port): every command fails to connect.
    hub.redis = aioredis.from_url(f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=1)
    try:
        await applicant.send("media_state", audio=False, video=True)
        await presence_of(mediator, "applicant", audio_off=True)
        await mediator.send("mute", seat="respondent", muted=True)
        await presence_of(applicant, "respondent", muted=True)
        await wait_frames(mediator, "applicant", 10)  # still connected, media still flowing
    finally:
        await hub.redis.aclose()
        hub.redis = reachable
    await applicant.send("media_state", audio=True, video=True)
    await presence_of(mediator, "applicant", audio_off=False)
    assert not mediator.ws.closed and not applicant.ws.closed
    assert not of(timeline(jiefen, room_id), "applicant", "left")
    live = json.loads(await reachable.get(hub.live_key(room_id)))
    assert live["muted"] == ["respondent"]  # made during the outage, saved with the next change
    assert live["media_state"]["applicant"] == {"audio": True, "video": True}
