"""A signalling connection cannot flood the room: chat lines over the connection's budget are
refused (the socket stays), ``media_state`` floods are deferred and the last switch still wins.
The bucket itself, then through the real signalling server (real Redis, PostgreSQL, aiortc).
"""

from __future__ import annotations

import asyncio

import pytest

from mediation_rooms import texts
from mediation_rooms.message_budget import (
    CHAT_BURST,
    MEDIA_STATE_BURST,
    MEDIA_STATE_RATE_PER_S,
    TokenBucket,
)
from tests import test_room_timeline
from tests.harness import RunningJiefen, eventually
from tests.test_room_signalling import Client, admit_applicant, file_case, open_room
from tests.test_room_timeline import joiner, of, presence_of, timeline

# The signalling connections of a test, closed afterwards (the timeline tests' fixture).
clients = test_room_timeline.clients


def test_the_bucket_allows_its_burst_then_its_rate() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=3)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_s(100.0) == pytest.approx(0.5)
    assert not bucket.take(100.4)
    assert bucket.take(100.5)
    assert bucket.take(110.0) and bucket.take(110.0) and bucket.take(110.0)  # refilled to 3
    assert not bucket.take(110.0)  # never more than its burst
    with pytest.raises(ValueError):
        TokenBucket(rate_per_s=0, burst=1)
    with pytest.raises(ValueError):
        TokenBucket(rate_per_s=1, burst=0)


@pytest.mark.services
async def test_a_chat_flood_is_refused_past_its_budget_and_the_socket_stays(
    jiefen: RunningJiefen, clients: list[Client]
) -> None:
    opened = await open_room(jiefen, await file_case(jiefen))
    join = joiner(jiefen, clients)
    mediator, applicant = await admit_applicant(join, opened["links"])
    for index in range(CHAT_BURST + 5):
        await applicant.send("chat", text=f"第{index}句")
    refusals = [await applicant.next("error") for _ in range(5)]
    assert {(r["code"], r["message"]) for r in refusals} == {
        ("rate_limited", texts.REFUSALS["rate_limited"])
    }
    lines = [await mediator.next("chat") for _ in range(CHAT_BURST)]
    assert [line["text"] for line in lines] == [f"第{i}句" for i in range(CHAT_BURST)]
    # The connection is still in the room: after a second, a line goes through again.
    await asyncio.sleep(1.1)
    await applicant.send("chat", text="还在")
    assert (await mediator.next("chat"))["text"] == "还在"
    assert not any(
        m["type"] == "chat" and m["text"] not in {f"第{i}句" for i in range(CHAT_BURST)} | {"还在"}
        for m in mediator.messages
    )


@pytest.mark.services
async def test_a_media_state_flood_is_deferred_and_the_last_switch_wins(
    jiefen: RunningJiefen, clients: list[Client]
) -> None:
    opened = await open_room(jiefen, await file_case(jiefen))
    room_id = opened["room_id"]
    join = joiner(jiefen, clients)
    mediator, applicant = await admit_applicant(join, opened["links"])
    flood = 40
    for index in range(flood):  # a stuck toggle: on, off, on, off … ending with the mic off
        await applicant.send("media_state", audio=index % 2 == 0, video=True)
    await presence_of(mediator, "applicant", audio_off=True)
    # No refusal: a switch over the budget is deferred, not lost.
    await asyncio.sleep(1.0)
    assert not [m for m in applicant.messages if m["type"] == "error"]

    async def settled() -> list[object] | None:
        found = of(timeline(jiefen, room_id), "applicant", "media_state")
        return found if found and found[-1]["audio"] is False else None

    recorded = await eventually(settled)
    # The burst, then at most a couple at the budget's rate: far fewer than were sent.
    assert len(recorded) <= MEDIA_STATE_BURST + 2 * MEDIA_STATE_RATE_PER_S + 1 < flood
    live = await jiefen.services.redis.get(jiefen.services.hub.live_key(room_id))
    assert live is not None and b'"applicant": {"audio": false, "video": true}' in live
