"""When a process starts and stops hosting a room: an ended room is never hosted again, and a
room everyone left is let go and picked up again on the next join."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from mediation_rooms.room_hub import RoomHub
from mediation_rooms.signalling import ProtocolError
from state import room_store
from tests.conftest import REDIS_URL
from tests.harness import ADMIN_TOKEN, RunningJiefen, running_jiefen
from tests.test_room_signalling import (
    Client,
    admit_applicant,
    file_case,
    open_room,
    token_of,
    wait_frames,
)
from tests.test_state_case_store import ID_NUMBER

pytestmark = pytest.mark.services


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


async def join(
    jiefen: RunningJiefen, clients: list[Client], token: str, identity: str | None = None
) -> Client:
    client = Client(await jiefen.session.ws_connect(f"{jiefen.url}/rooms/ws"))
    clients.append(client)
    await client.send_join(token, identity)
    return client


async def live_with_applicant(
    jiefen: RunningJiefen, clients: list[Client], links: dict[str, str]
) -> tuple[Client, Client]:
    """The mediator in, the applicant admitted (the room is live), media flowing."""
    return await admit_applicant(partial(join, jiefen, clients), links)


async def let_go(hub: RoomHub, room_id: str) -> None:
    """Wait until the process no longer hosts ``room_id``."""
    deadline = time.monotonic() + 10
    while room_id in hub.live_rooms:
        assert time.monotonic() < deadline, "the room is still hosted"
        await asyncio.sleep(0.05)


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    opened: list[Client] = []
    yield opened
    for client in opened:
        await client.close()


async def test_a_join_racing_the_end_does_not_host_the_ended_room(
    jiefen: RunningJiefen, clients: list[Client]
) -> None:
    opened = await open_room(jiefen, await file_case(jiefen))
    mediator = await join(jiefen, clients, token_of(opened["links"]["mediator"]))
    await mediator.answer_offer()
    # A join that read the room before the end and reaches hosting after it.
    before_the_end = await room_store.get_room(jiefen.services.db, opened["room_id"])
    assert before_the_end is not None and before_the_end.state == "open"
    await mediator.send("end")
    await mediator.next("ended")
    await mediator.ws.receive(timeout=5)  # the close, answered
    hub = jiefen.services.hub
    await let_go(hub, opened["room_id"])  # the media closes after everyone is told
    with pytest.raises(ProtocolError) as refused:
        await hub._live_room(before_the_end)
    assert refused.value.code == "room_closed"
    assert opened["room_id"] not in hub.live_rooms
    # Placement says so too, and turns away what is not a token with the page's message.
    placement = f"{jiefen.url}/rooms/placement"
    token = token_of(opened["links"]["mediator"])
    async with jiefen.session.post(placement, json={"token": token}) as response:
        assert response.status == 410
        assert (await response.json())["error"] == "room_closed"
    for body in (b"not json", b'{"token": 5}', b"[]"):
        async with jiefen.session.post(placement, data=body) as response:
            assert response.status == 400
            answer = await response.json()
            assert answer["error"] == "malformed" and answer["message"]


async def test_an_empty_room_is_let_go_and_picked_up_again(
    quick_release: RunningJiefen, clients: list[Client]
) -> None:
    jiefen = quick_release
    hub = jiefen.services.hub
    opened = await open_room(jiefen, await file_case(jiefen))
    room_id, links = opened["room_id"], opened["links"]
    mediator, applicant = await live_with_applicant(jiefen, clients, links)
    assert hub.placement is not None and hub.node is not None
    room_key = hub.placement.room_key(room_id)
    assert await hub.redis.get(room_key) in (hub.node.node_id, hub.node.node_id.encode())

    await mediator.close()
    await applicant.close()
    await let_go(hub, room_id)
    assert await hub.redis.get(room_key) is None  # its place is free for any process

    mediator = await join(jiefen, clients, token_of(links["mediator"]))
    await mediator.answer_offer()
    applicant = await join(jiefen, clients, token_of(links["applicant"]), ID_NUMBER[-6:])
    await applicant.answer_offer()  # still admitted: straight back in
    await wait_frames(mediator, "applicant", 20)
    await wait_frames(applicant, "mediator", 20)

    directory = jiefen.settings.recordings_dir / room_id
    assert (directory / "applicant-video-02.webm").exists()
    timeline: list[dict[str, Any]] = [
        json.loads(line) for line in (directory / "timeline.jsonl").read_text().splitlines()
    ]
    events = [entry["event"] for entry in timeline]
    stopped = events.index("hosting_stopped")
    assert "recording_resumed" in events[stopped:]


async def test_a_live_room_hosted_again_without_its_live_state_is_still_recorded(
    quick_release: RunningJiefen, clients: list[Client]
) -> None:
    """Redis lost the session state (restart without persistence, or it expired): the room is
    live in the database, so recording resumes on the database's clock; admission is asked
    again of the mediator."""
    jiefen = quick_release
    hub = jiefen.services.hub
    opened = await open_room(jiefen, await file_case(jiefen))
    room_id, links = opened["room_id"], opened["links"]
    mediator, applicant = await live_with_applicant(jiefen, clients, links)
    await mediator.close()
    await applicant.close()
    await let_go(hub, room_id)
    await hub.redis.delete(hub.live_key(room_id))

    mediator = await join(jiefen, clients, token_of(links["mediator"]))
    await mediator.answer_offer()
    applicant = await join(jiefen, clients, token_of(links["applicant"]), ID_NUMBER[-6:])
    await applicant.next("waiting")  # nobody remembers the admission: the mediator decides
    await mediator.send("admit", seat="applicant")
    await applicant.answer_offer()
    await wait_frames(mediator, "applicant", 20)
    directory = jiefen.settings.recordings_dir / room_id
    assert (directory / "applicant-video-02.webm").stat().st_size > 0
    events = [
        json.loads(line)["event"]
        for line in (directory / "timeline.jsonl").read_text().splitlines()
    ]
    assert "recording_resumed" in events[events.index("hosting_stopped") :]
