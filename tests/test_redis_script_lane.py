"""The script lane on the real Redis: replies stay with their callers, scripts reload after a
flush, and the connections close with their client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import DataError, ResponseError

from state.redis_connection import LuaScript, ScriptLane, pack_command
from tests.conftest import REDIS_URL


def test_commands_are_packed_byte_for_byte_as_redis_py_packs_them() -> None:
    reference = Connection()
    arguments: list[Any] = [
        "EVALSHA",
        "a" * 40,
        2,
        "k:张三",
        b"\x00\r\n",
        0,
        -7,
        2**70,
        1.5,
        -0.25,
        "",
    ]
    commands: list[list[Any]] = [arguments, ["GET", "x"], ["PING"], ["SET", "k", bytearray(b"v")]]
    for command in commands:
        assert pack_command(command) == b"".join(reference.pack_command(*command))
    latin = Connection(encoding="latin-1", encoding_errors="replace")
    assert pack_command(["SET", "k", "张é"], "latin-1", "replace") == b"".join(
        latin.pack_command("SET", "k", "张é")
    )
    for bad in (True, None, object(), [1]):
        with pytest.raises(DataError):
            pack_command(["SET", "k", bad])  # type: ignore[list-item]


async def test_every_kind_of_argument_reaches_redis_intact(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    lane = ScriptLane.of(redis_client)
    for value, stored in (
        ("调解 ]]>", "调解 ]]>".encode()),
        (b"\x00\xff\r\n", b"\x00\xff\r\n"),
        (-42, b"-42"),
        (0.125, b"0.125"),
    ):
        await lane.execute(("SET", f"{redis_prefix}kind", value))
        assert await redis_client.get(f"{redis_prefix}kind") == stored


async def test_a_command_cut_short_never_hands_its_reply_to_the_next_caller(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    lane = ScriptLane.of(redis_client)
    waiting, other = f"{redis_prefix}waiting", f"{redis_prefix}other"
    await redis_client.set(other, b"mine")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await lane.execute(("BLPOP", waiting, 2))
    # Were the cut-short connection reused, its BLPOP would still be waiting on the server: it
    # would take this item, and the GET below would read the BLPOP's reply as its own.
    await redis_client.rpush(waiting, b"late")
    assert await lane.execute(("GET", other)) == b"mine"
    await asyncio.sleep(0.05)
    assert await redis_client.lrange(waiting, 0, -1) == [b"late"]


async def test_an_error_reply_is_raised_and_the_connection_stays_in_step(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    lane = ScriptLane.of(redis_client)
    key = f"{redis_prefix}counter"
    await redis_client.set(key, b"not a number")
    with pytest.raises(ResponseError):
        await lane.execute(("INCR", key))
    assert await lane.execute(("GET", key)) == b"not a number"


async def test_concurrent_scripts_each_get_their_own_reply_and_reload_after_a_flush(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    echo = LuaScript(redis_client, "return ARGV[1] .. ':' .. KEYS[1]")
    keys = [f"{redis_prefix}k{n}" for n in range(50)]
    replies = await asyncio.gather(*(echo(keys=[key], args=[str(n)]) for n, key in enumerate(keys)))
    assert replies == [f"{n}:{key}".encode() for n, key in enumerate(keys)]
    await redis_client.script_flush()
    assert await echo(keys=[keys[0]], args=["again"]) == f"again:{keys[0]}".encode()


async def test_the_lane_is_one_per_client_and_closes_with_it(
    redis_client: aioredis.Redis,  # Redis is up (or the test fails as the suite requires)
) -> None:
    client = aioredis.from_url(REDIS_URL)
    assert ScriptLane.of(client) is not ScriptLane.of(redis_client)
    lane = ScriptLane.of(client)
    assert ScriptLane.of(client) is lane
    await lane.execute(("PING",))
    [connection] = lane._idle
    assert connection.is_connected
    await client.aclose()
    assert not connection.is_connected  # the pool closed it: nothing left open after a test


async def test_a_command_is_bounded_by_the_clients_socket_timeout(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    client = aioredis.from_url(REDIS_URL, socket_timeout=0.2)
    try:
        with pytest.raises(TimeoutError):  # not BLPOP's own answer (nil) after 5 s
            await ScriptLane.of(client).execute(("BLPOP", f"{redis_prefix}never", 5))
    finally:
        await client.aclose()


async def test_a_connection_the_server_closed_while_idle_is_reconnected_not_failed(
    redis_client: aioredis.Redis,
) -> None:
    lane = ScriptLane.of(redis_client)
    connection_id = await lane.execute(("CLIENT", "ID"))
    await redis_client.execute_command("CLIENT", "KILL", "ID", connection_id)
    await asyncio.sleep(0.05)  # the close reaches the idle connection
    assert await lane.execute(("PING",)) in (b"PONG", "PONG", True)
    assert await lane.execute(("CLIENT", "ID")) != connection_id


async def test_connections_beyond_the_idle_cap_go_back_to_the_pool(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    lane = ScriptLane.of(redis_client)
    count = ScriptLane.IDLE_CAP + 24
    waits = [lane.execute(("BLPOP", f"{redis_prefix}empty:{n}", 0.2)) for n in range(count)]
    assert await asyncio.gather(*waits) == [None] * count  # all at once, each on its own
    pool = redis_client.connection_pool
    assert len(lane._idle) == ScriptLane.IDLE_CAP
    assert len(pool._in_use_connections) == ScriptLane.IDLE_CAP  # type: ignore[attr-defined]
    assert await redis_client.ping()  # the pool's own commands are not starved
