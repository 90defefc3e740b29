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

from jiefen.errors import NoMediaNode
from mediation_rooms.node_heartbeat import NodeHeartbeat
from mediation_rooms.placement import (
    CLAIM_TTL_S,
    NODE_TTL_S,
    SETTLE_S,
    MediaNode,
    MediaPlacement,
    NodeIdInUse,
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


def another_process(placement: MediaPlacement) -> MediaPlacement:
    """The placement of another process on the same Redis (real, or the same stand-in)."""
    return MediaPlacement(placement.redis, prefix=placement.prefix)


def twin_of(node: MediaNode) -> MediaNode:
    """Another process started under the same node id (a container with a fixed hostname)."""
    return MediaNode(node.node_id, "ws://10.0.0.9:8091/rooms/ws", capacity=node.capacity)


async def lose_redis_data(placement: MediaPlacement) -> None:
    """Redis restarted without persistence: every key is gone."""
    keys = [key async for key in placement.redis.scan_iter(match=f"{placement.prefix}*")]
    if keys:
        await placement.redis.delete(*keys)


async def never_lost(room_id: str) -> None:
    raise AssertionError(f"{room_id} was handed over")


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


async def test_a_second_process_under_a_live_nodes_id_is_refused_and_changes_nothing(
    placement: MediaPlacement,
) -> None:
    await placement.register(NODE_A)
    assert await placement.claim("room-1", "a") is None
    twin, other = twin_of(NODE_A), another_process(placement)
    assert twin.instance != NODE_A.instance

    with pytest.raises(NodeIdInUse) as refused:
        await other.register(twin)
    assert refused.value.node_id == "a" and refused.value.holder == NODE_A.instance
    assert 0 < refused.value.remaining_s <= NODE_TTL_S
    with pytest.raises(NodeIdInUse):
        await other.heartbeat(twin, ["room-1"])
    # Whatever the twin tries, the first process keeps its registration, rooms and load.
    assert await other.claim("room-2", "a") == "unregistered:a"
    await other.release("room-1", "a")
    await other.deregister("a", ["room-1"])
    assert await placement.node("a") == NODE_A
    assert await placement.redis.get(placement.room_key("room-1")) in (b"a", "a")
    assert await placement.redis.get(placement.room_key("room-2")) is None
    assert await placement.redis.smembers(placement.rooms_key("a")) in ({b"room-1"}, {"room-1"})
    assert [status.node for status in await placement.nodes()] == [NODE_A]
    assert await placement.claim("room-1", "a") is None  # still the first process's room


async def test_a_restarted_process_takes_its_id_over_once_the_old_registration_runs_out(
    placement: MediaPlacement,
) -> None:
    """kill -9 and an immediate restart: the old key is still there for up to NODE_TTL_S, but
    nobody renews it; the new process waits for it, then hosts the rooms still claimed under
    its id (they are placed on it, and it may claim them)."""
    before = another_process(placement)
    await before.register(twin_of(NODE_A))
    assert await before.claim("room-1", "a") is None
    await placement.redis.pexpire(placement.node_key("a"), 400)  # killed ~9.6 s ago

    heartbeat = NodeHeartbeat(placement, NODE_A, hosted=list, on_lost=never_lost)
    started = time.monotonic()
    await heartbeat.start()
    try:
        assert 0.3 < time.monotonic() - started < 3
        assert await placement.node("a") == NODE_A
        assert (await placement.place("room-1")).node_id == "a"
        assert await placement.claim("room-1", "a") is None
    finally:
        await heartbeat.stop()
    assert await placement.node("a") is None


async def test_a_process_starting_under_a_running_processs_id_refuses_to_start(
    placement: MediaPlacement,
) -> None:
    twin, other = twin_of(NODE_A), another_process(placement)
    running = NodeHeartbeat(
        other, twin, hosted=lambda: ["room-1"], on_lost=never_lost, interval_s=0.2
    )
    await running.start()
    assert await other.claim("room-1", "a") is None
    starting = NodeHeartbeat(placement, NODE_A, hosted=list, on_lost=never_lost)
    try:
        started = time.monotonic()
        with pytest.raises(NodeIdInUse):
            await starting.start()
        # Told apart from a stopped process's key by the renewals, long before that key's TTL.
        assert time.monotonic() - started < NODE_TTL_S / 2
        await starting.stop()  # it registered nothing, so it deregisters nothing
        assert await placement.node("a") == twin
        assert (await placement.place("room-1")).signalling_url == twin.signalling_url
    finally:
        await running.stop()


async def test_a_process_whose_id_another_took_hands_its_rooms_over_at_once(
    placement: MediaPlacement,
) -> None:
    """This process stalled long enough to be taken for dead, and another one started under the
    same id meanwhile: its next beat writes nothing and it stops hosting everything, without
    waiting for the fencing deadline, and without touching what the other one holds."""
    await placement.register(NODE_B)
    handed_over: list[str] = []

    async def on_lost(room_id: str) -> None:
        handed_over.append(room_id)

    hosted = ["room-1", "room-2"]
    heartbeat = NodeHeartbeat(
        placement,
        NODE_A,
        hosted=lambda: [room for room in hosted if room not in handed_over],
        on_lost=on_lost,
        interval_s=0.05,
        fence_after_s=30,
    )
    await heartbeat.start()
    try:
        for room in hosted:
            assert await placement.claim(room, "a") is None
        await asyncio.sleep(0.15)
        assert handed_over == []
        twin, other = twin_of(NODE_A), another_process(placement)
        # a's key ran out and the twin registered, in one step (a's beats run meanwhile).
        await placement.redis.hset(
            placement.node_key("a"),
            mapping={"instance": twin.instance, "url": twin.signalling_url},
        )
        await other.register(twin)
        assert await other.claim("room-1", "a") is None  # the twin hosts room-1 now
        await until(lambda: sorted(handed_over) == hosted)
        assert heartbeat.identity_lost
        # The beats overwrote nothing, and what this process does now changes nothing.
        assert await placement.node("a") == twin
        assert await placement.claim("room-3", "a") == "unregistered:a"
        await placement.release("room-1", "a")
        assert await placement.redis.get(placement.room_key("room-1")) in (b"a", "a")
    finally:
        await heartbeat.stop()
    assert await placement.node("a") == twin  # nor does its shutdown
    assert (await placement.place("room-1")).node_id == "a"


async def test_one_beat_after_redis_lost_its_data_restores_the_node_and_its_claims(
    placement: MediaPlacement,
) -> None:
    # Beats are made by hand here, in a chosen order: no background renewals.
    heartbeat_a = NodeHeartbeat(placement, NODE_A, hosted=lambda: ["room-1"], on_lost=never_lost)
    heartbeat_b = NodeHeartbeat(placement, NODE_B, hosted=lambda: ["room-2"], on_lost=never_lost)
    await placement.register(NODE_A)
    await placement.register(NODE_B)
    assert await placement.claim("room-1", "a") is None
    assert await placement.claim("room-2", "b") is None
    await heartbeat_a.beat()
    await heartbeat_b.beat()
    assert await placement.redis.exists(placement.settling_key) == 0  # nothing was lost
    await lose_redis_data(placement)
    with pytest.raises(NoMediaNode):
        await placement.place("room-1")  # nobody registered yet: nothing placed

    # b beats first and finds its own key gone: Redis lost its data. a's room has no claim
    # now, but a has not beaten yet: the room must not move to b meanwhile.
    await heartbeat_b.beat()
    assert (await placement.place("room-2")).node_id == "b"
    with pytest.raises(NoMediaNode, match="Redis lost its data"):
        await placement.place("room-1")
    with pytest.raises(NoMediaNode):
        await placement.place("room-new")  # the cost: no claim, nothing placed for now
    settling = await placement.redis.pttl(placement.settling_key)
    assert 0 < settling <= SETTLE_S * 1000

    # a's single beat restores its registration, its place among the nodes, and its claim.
    await heartbeat_a.beat()
    assert await placement.node("a") == NODE_A
    assert 0 < await placement.redis.ttl(placement.node_key("a")) <= NODE_TTL_S
    assert await placement.redis.smembers(placement.nodes_key) in ({b"a", b"b"}, {"a", "b"})
    assert await placement.redis.get(placement.room_key("room-1")) in (b"a", "a")
    assert 0 < await placement.redis.ttl(placement.room_key("room-1")) <= CLAIM_TTL_S
    assert await placement.redis.smembers(placement.rooms_key("a")) in ({b"room-1"}, {"room-1"})
    assert (await placement.place("room-1")).node_id == "a"
    assert await placement.claim("room-1", "b") == "a"

    await placement.redis.pexpire(placement.settling_key, 1)  # SETTLE_S later
    await asyncio.sleep(0.01)
    assert (await placement.place("room-new")).node_id in {"a", "b"}


async def test_only_a_key_lost_within_the_fence_holds_placement_up(
    placement: MediaPlacement,
) -> None:
    """A fresh registration, or a node back after it was taken for dead (it has fenced: it
    hosts nothing), does not mean Redis lost its data."""
    await placement.register(NODE_A)
    assert (await placement.place("room-1")).node_id == "a"
    await placement.register(NODE_B)
    heartbeat = NodeHeartbeat(placement, NODE_B, hosted=list, on_lost=never_lost, fence_after_s=0.2)
    await kill(placement, NODE_B)
    await asyncio.sleep(0.3)  # past its fence: its key ran out, as it should
    await heartbeat.beat()
    assert await placement.redis.exists(placement.settling_key) == 0
    assert (await placement.place("room-2")).node_id == "b"
