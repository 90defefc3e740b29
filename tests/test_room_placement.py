"""Placing rooms on media processes through Redis (mediation_rooms/placement.py).

The scripts run on the real Redis and, for the embedded mode, on the in-process stand-in
(fakeredis with Lua), which must agree with it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import fakeredis
import pytest
import redis.asyncio as aioredis

from mediation_rooms.placement import (
    MediaNode,
    MediaPlacement,
    NodeHeartbeat,
    NoMediaNode,
    signalling_url_for,
)

pytestmark = pytest.mark.services

NODE_A = MediaNode("a", "ws://10.0.0.1:8091/rooms/ws", capacity=2)
NODE_B = MediaNode("b", "ws://10.0.0.2:8091/rooms/ws", capacity=2)


@pytest.fixture(params=["redis", "stand-in"])
async def placement(
    request: pytest.FixtureRequest, redis_client: aioredis.Redis, redis_prefix: str
) -> AsyncIterator[MediaPlacement]:
    if request.param == "redis":
        yield MediaPlacement(redis_client, prefix=redis_prefix)
        return
    stand_in = fakeredis.FakeAsyncRedis()
    yield MediaPlacement(stand_in, prefix=redis_prefix)
    await stand_in.aclose()


async def until(condition: Callable[[], bool], wait_s: float = 2.0) -> None:
    deadline = time.monotonic() + wait_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def kill(placement: MediaPlacement, node: MediaNode) -> None:
    """What a SIGKILL looks like from Redis once the TTL has run out: the node's key is gone."""
    await placement.redis.delete(placement.node_key(node.node_id))


async def test_no_live_node_means_no_placement(placement: MediaPlacement) -> None:
    with pytest.raises(NoMediaNode):
        await placement.place("room-1")
    await placement.register(NODE_A)
    await kill(placement, NODE_A)
    with pytest.raises(NoMediaNode):
        await placement.place("room-1")
    # The dead node was pruned from the set of nodes when it was seen.
    assert await placement.redis.smembers(placement.nodes_key) == set()


async def test_rooms_spread_by_load_and_stay_where_they_are(placement: MediaPlacement) -> None:
    await placement.register(NODE_A)
    await placement.register(NODE_B)
    chosen = [(await placement.place(f"room-{i}")).node_id for i in range(4)]
    assert sorted(chosen) == ["a", "a", "b", "b"]
    # Asking again (a reconnect, the other parties) gives the same node.
    assert [(await placement.place(f"room-{i}")).node_id for i in range(4)] == chosen
    # Full everywhere: a fifth room is still placed (nobody is refused for load).
    assert (await placement.place("room-4")).node_id in {"a", "b"}
    statuses = {status.node.node_id: status for status in await placement.nodes()}
    assert {node: status.placed for node, status in statuses.items()} in (
        {"a": 3, "b": 2},
        {"a": 2, "b": 3},
    )
    assert statuses["a"].node == NODE_A


async def test_a_live_owner_keeps_its_room_and_a_dead_ones_room_moves(
    placement: MediaPlacement,
) -> None:
    await placement.register(NODE_A)
    await placement.register(NODE_B)
    assert await placement.claim("room-1", "a") is None
    assert await placement.claim("room-1", "a") is None  # idempotent
    assert await placement.claim("room-1", "b") == "a"  # b must not host a's room
    assert (await placement.place("room-1")).node_id == "a"

    await kill(placement, NODE_A)
    assert (await placement.place("room-1")).node_id == "b"
    assert await placement.claim("room-1", "b") is None
    # a comes back (restarted) while b hosts the room: a is turned away.
    await placement.register(NODE_A)
    assert await placement.claim("room-1", "a") == "b"


async def test_heartbeat_reports_a_room_taken_over_and_forgets_lapsed_reservations(
    placement: MediaPlacement,
) -> None:
    await placement.register(NODE_A)
    await placement.register(NODE_B)
    assert await placement.claim("room-1", "a") is None
    assert (await placement.place("room-2")).node_id == "b"
    assert (await placement.place("room-3")).node_id == "a"
    # a stalls long enough to be taken for dead; b takes room-1 over.
    await kill(placement, NODE_A)
    assert await placement.claim("room-1", "b") is None
    # room-3's reservation lapses without anybody joining.
    await placement.redis.delete(placement.room_key("room-3"))
    lost: list[str] = []

    async def on_lost(room_id: str) -> None:
        lost.append(room_id)

    heartbeat = NodeHeartbeat(placement, NODE_A, hosted=lambda: ["room-1"], on_lost=on_lost)
    await heartbeat.beat()
    await until(lambda: lost == ["room-1"])
    assert await placement.node("a") == NODE_A  # registered again by the beat
    assert await placement.redis.smembers(placement.rooms_key("a")) == set()
    assert (await placement.place("room-1")).node_id == "b"


async def test_a_node_taken_for_dead_claims_nothing(placement: MediaPlacement) -> None:
    await placement.register(NODE_A)
    await kill(placement, NODE_A)
    assert await placement.claim("room-1", "a") == "unregistered:a"
    assert await placement.redis.get(placement.room_key("room-1")) is None


async def test_a_node_that_cannot_renew_stops_hosting_before_it_counts_as_dead(
    placement: MediaPlacement, redis_prefix: str
) -> None:
    """Redis out of reach: the node hands its rooms over itself, before the others may place
    them elsewhere, so that no room is hosted by two processes."""
    await placement.register(NODE_B)
    handed_over: list[str] = []

    async def on_lost(room_id: str) -> None:
        handed_over.append(room_id)

    heartbeat = NodeHeartbeat(
        placement,
        NODE_A,
        hosted=lambda: [room for room in ("room-1", "room-2") if room not in handed_over],
        on_lost=on_lost,
        interval_s=0.05,
        fence_after_s=0.4,
    )
    unreachable = aioredis.from_url("redis://127.0.0.1:9", socket_connect_timeout=0.2)
    await heartbeat.start()
    try:
        await asyncio.sleep(0.3)
        assert handed_over == []  # renewing fine
        heartbeat.placement = MediaPlacement(unreachable, prefix=redis_prefix)
        await until(lambda: sorted(handed_over) == ["room-1", "room-2"], wait_s=5)
    finally:
        await heartbeat.stop()
        await unreachable.aclose()


async def test_release_frees_only_the_owners_room(placement: MediaPlacement) -> None:
    await placement.register(NODE_A)
    await placement.register(NODE_B)
    assert await placement.claim("room-1", "a") is None
    await placement.release("room-1", "b")  # not b's: nothing happens
    assert await placement.redis.get(placement.room_key("room-1")) in (b"a", "a")
    await placement.release("room-1", "a")
    assert await placement.redis.get(placement.room_key("room-1")) is None
    # Vacant: the emptier node gets it.
    assert await placement.claim("room-2", "a") is None
    assert (await placement.place("room-1")).node_id == "b"


async def test_a_clean_shutdown_makes_the_nodes_rooms_vacant_at_once(
    placement: MediaPlacement,
) -> None:
    await placement.register(NODE_A)
    await placement.register(NODE_B)
    assert await placement.claim("room-1", "a") is None

    async def on_lost(room_id: str) -> None:
        raise AssertionError(room_id)

    heartbeat = NodeHeartbeat(placement, NODE_A, hosted=lambda: ["room-1"], on_lost=on_lost)
    await heartbeat.start()
    await heartbeat.stop()
    assert await placement.node("a") is None
    assert [status.node.node_id for status in await placement.nodes()] == ["b"]
    assert (await placement.place("room-1")).node_id == "b"


def test_signalling_urls_follow_the_public_urls_scheme() -> None:
    assert signalling_url_for("https://media1.example.cn/") == "wss://media1.example.cn/rooms/ws"
    assert signalling_url_for("http://127.0.0.1:8091") == "ws://127.0.0.1:8091/rooms/ws"
    assert signalling_url_for("https://x.cn/m2") == "wss://x.cn/m2/rooms/ws"
    assert signalling_url_for("") == "/rooms/ws"  # the join page's own origin
