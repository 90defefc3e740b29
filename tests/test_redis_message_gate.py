"""The message gate on the real Redis: dedupe, ordered turns per user, stale turns, storage."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from jiefen.errors import LockTimeout
from state.message_gate import Duplicate, MessageGate, Turn


def _gate(redis: aioredis.Redis, prefix: str, **options: float) -> MessageGate:
    return MessageGate(redis, prefix=prefix, **options)  # type: ignore[arg-type]


async def test_first_delivery_runs_and_a_retry_gets_the_same_reply(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    gate = _gate(redis_client, redis_prefix)
    keys = gate.keys("gh_a", "o_user", "msg:1")
    turn = await gate.begin(keys)
    assert isinstance(turn, Turn) and turn.ready and turn.conversation == b""
    retry_while_running = await gate.begin(keys)
    assert retry_while_running == Duplicate(pending=True, pushed=False, reply=None)
    await gate.commit(keys, turn, conversation=b"\x00state", reply="好的]]>收到")
    assert await gate.begin(keys) == Duplicate(pending=False, pushed=False, reply="好的]]>收到")
    next_turn = await gate.begin(gate.keys("gh_a", "o_user", "msg:2"))
    assert isinstance(next_turn, Turn) and next_turn.conversation == b"\x00state"
    ttl = await redis_client.ttl(keys.conversation)
    assert 7 * 24 * 3600 - 60 < ttl <= 7 * 24 * 3600  # a resident may come back for 7 days


async def test_messages_of_one_user_take_turns_in_order(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    gate = _gate(redis_client, redis_prefix, poll_interval_s=0.005)
    order: list[int] = []
    keys = [gate.keys("gh_a", "o_user", f"msg:{n}") for n in range(5)]
    turns = [await gate.begin(k) for k in keys]  # tickets 1..5 in arrival order
    assert [t.ready for t in turns if isinstance(t, Turn)] == [True, False, False, False, False]

    async def run(index: int) -> None:
        turn = turns[index]
        assert isinstance(turn, Turn)
        if not turn.ready:
            turn = await gate.wait_turn(keys[index], turn, timeout_s=5)
        order.append(index)
        await asyncio.sleep(0.01)
        await gate.commit(keys[index], turn, conversation=str(index).encode(), reply=str(index))

    await asyncio.gather(*(run(i) for i in reversed(range(5))))
    assert order == [0, 1, 2, 3, 4]


async def test_other_users_are_not_held_up(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    gate = _gate(redis_client, redis_prefix)
    first = await gate.begin(gate.keys("gh_a", "o_one", "msg:1"))
    other = await gate.begin(gate.keys("gh_a", "o_two", "msg:2"))
    assert isinstance(first, Turn) and isinstance(other, Turn)
    assert first.ready and other.ready


async def test_a_dead_turn_is_skipped_after_its_lease(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    gate = _gate(redis_client, redis_prefix, turn_lease_s=0.2, poll_interval_s=0.01)
    crashed = await gate.begin(gate.keys("gh_a", "o_user", "msg:1"))
    assert isinstance(crashed, Turn) and crashed.ready  # never committed: its process "died"
    keys = gate.keys("gh_a", "o_user", "msg:2")
    waiting = await gate.begin(keys)
    assert isinstance(waiting, Turn) and not waiting.ready
    turn = await gate.wait_turn(keys, waiting, timeout_s=5)
    assert turn.ready


async def test_waiting_too_long_raises_lock_timeout(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    gate = _gate(redis_client, redis_prefix, turn_lease_s=60, poll_interval_s=0.01)
    await gate.begin(gate.keys("gh_a", "o_user", "msg:1"))
    keys = gate.keys("gh_a", "o_user", "msg:2")
    waiting = await gate.begin(keys)
    assert isinstance(waiting, Turn)
    with pytest.raises(LockTimeout):
        await gate.wait_turn(keys, waiting, timeout_s=0.1)


async def test_release_lets_the_retry_run_afresh_and_passes_the_turn(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    gate = _gate(redis_client, redis_prefix)
    keys = gate.keys("gh_a", "o_user", "msg:1")
    turn = await gate.begin(keys)
    assert isinstance(turn, Turn)
    await gate.release(keys, turn)
    retry = await gate.begin(keys)
    assert isinstance(retry, Turn) and retry.ready


async def test_mark_pushed_stops_a_retry_from_repeating_the_reply(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    gate = _gate(redis_client, redis_prefix)
    keys = gate.keys("gh_a", "o_user", "msg:1")
    turn = await gate.begin(keys)
    assert isinstance(turn, Turn)
    await gate.commit(keys, turn, conversation=b"", reply="答复")
    await gate.mark_pushed(keys)
    assert await gate.begin(keys) == Duplicate(pending=False, pushed=True, reply=None)
    assert await redis_client.exists(keys.conversation) == 0  # b'' deletes the conversation


async def test_a_waiter_that_gives_up_does_not_let_later_messages_jump_the_queue(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    gate = _gate(redis_client, redis_prefix, turn_lease_s=60, poll_interval_s=0.005)
    keys = [gate.keys("gh_a", "o_user", f"msg:{n}") for n in range(3)]
    running, giving_up, later = [await gate.begin(k) for k in keys]
    assert isinstance(running, Turn) and isinstance(giving_up, Turn) and isinstance(later, Turn)
    await gate.release(keys[1], giving_up)  # e.g. its wait timed out
    with pytest.raises(LockTimeout):  # the first message still runs: the third must wait
        await gate.wait_turn(keys[2], later, timeout_s=0.2)
    await gate.commit(keys[0], running, conversation=b"first", reply="1")
    turn = await gate.wait_turn(keys[2], later, timeout_s=1)  # the abandoned one is stepped over
    assert turn.ready and turn.conversation == b"first"


async def test_every_waiter_behind_a_dead_turn_gets_its_turn_in_order(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    gate = _gate(redis_client, redis_prefix, turn_lease_s=0.2, poll_interval_s=0.005)
    dead = await gate.begin(gate.keys("gh_a", "o_user", "msg:dead"))
    assert isinstance(dead, Turn) and dead.ready  # its process never commits
    keys = [gate.keys("gh_a", "o_user", f"msg:{n}") for n in range(3)]
    turns = [await gate.begin(k) for k in keys]
    order: list[int] = []

    async def run(index: int) -> None:
        turn = turns[index]
        assert isinstance(turn, Turn)
        turn = await gate.wait_turn(keys[index], turn, timeout_s=5)
        order.append(index)
        await gate.commit(keys[index], turn, conversation=str(index).encode(), reply="")

    await asyncio.gather(*(run(i) for i in range(3)))
    assert order == [0, 1, 2]


async def test_a_turn_skipped_for_outliving_its_lease_stores_nothing(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    gate = _gate(redis_client, redis_prefix, turn_lease_s=0.1, poll_interval_s=0.005)
    slow_keys = gate.keys("gh_a", "o_user", "msg:slow")
    slow = await gate.begin(slow_keys)
    next_keys = gate.keys("gh_a", "o_user", "msg:next")
    waiting = await gate.begin(next_keys)
    assert isinstance(slow, Turn) and isinstance(waiting, Turn)
    taken_over = await gate.wait_turn(next_keys, waiting, timeout_s=2)
    await gate.commit(next_keys, taken_over, conversation=b"newer", reply="")
    with pytest.raises(LockTimeout):
        await gate.commit(slow_keys, slow, conversation=b"stale", reply="")
    assert await redis_client.get(slow_keys.conversation) == b"newer"


async def test_a_retry_takes_over_a_message_whose_first_delivery_died(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    gate = _gate(redis_client, redis_prefix, turn_lease_s=0.1, poll_interval_s=0.005)
    keys = gate.keys("gh_a", "o_user", "msg:1")
    died = await gate.begin(keys)
    assert isinstance(died, Turn)  # its process is killed here: no commit, no release
    assert await gate.begin(keys) == Duplicate(pending=True, pushed=False, reply=None)
    await asyncio.sleep(0.15)
    retry = await gate.begin(keys)
    assert isinstance(retry, Turn), retry
    turn = await gate.wait_turn(keys, retry, timeout_s=2)  # the dead turn is skipped too
    await gate.commit(keys, turn, conversation=b"handled", reply="好的")
    assert await gate.begin(keys) == Duplicate(pending=False, pushed=False, reply="好的")
    with pytest.raises(LockTimeout):  # were the first delivery alive after all, it stores nothing
        await gate.commit(keys, died, conversation=b"zombie", reply="重复")
    assert await redis_client.get(keys.conversation) == b"handled"


async def test_a_retry_never_takes_over_from_a_delivery_still_waiting_in_line(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    gate = _gate(redis_client, redis_prefix, turn_lease_s=0.1, poll_interval_s=0.005)
    holder = await gate.begin(gate.keys("gh_a", "o_user", "msg:holder"))
    keys = gate.keys("gh_a", "o_user", "msg:waiting")
    waiting = await gate.begin(keys)
    assert isinstance(holder, Turn) and isinstance(waiting, Turn) and not waiting.ready
    await asyncio.sleep(0.15)  # long past the lease, but the first delivery is alive in line
    assert await gate.begin(keys) == Duplicate(pending=True, pushed=False, reply=None)


async def test_release_after_a_commit_keeps_the_reply(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    """Commit reached Redis but its answer timed out: releasing must not erase the reply."""
    gate = _gate(redis_client, redis_prefix)
    keys = gate.keys("gh_a", "o_user", "msg:1")
    turn = await gate.begin(keys)
    assert isinstance(turn, Turn)
    await gate.commit(keys, turn, conversation=b"state", reply="好的")
    await gate.release(keys, turn)
    assert await gate.begin(keys) == Duplicate(pending=False, pushed=False, reply="好的")
    later = await gate.begin(gate.keys("gh_a", "o_user", "msg:2"))
    assert isinstance(later, Turn) and later.ready and later.conversation == b"state"


async def test_scripts_are_loaded_again_after_redis_forgets_them(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    gate = _gate(redis_client, redis_prefix)
    first = await gate.begin(gate.keys("gh_a", "o_user", "msg:1"))
    await redis_client.script_flush()  # e.g. Redis restarted, or failed over to a replica
    second = await gate.begin(gate.keys("gh_a", "o_user", "msg:2"))
    assert isinstance(first, Turn) and isinstance(second, Turn)
    assert second.ticket == first.ticket + 1


async def test_transcript_lines_are_appended_capped_and_dropped_with_the_intake(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    gate = MessageGate(redis_client, prefix=redis_prefix, transcript_limit=3)
    for n in range(3):
        keys = gate.keys("gh_a", "o_user", f"msg:{n}")
        turn = await gate.begin(keys)
        assert isinstance(turn, Turn)
        lines = [f"in-{n}".encode(), f"out-{n}".encode()]
        await gate.commit(keys, turn, conversation=b"state", reply="", transcript=lines)
    assert await gate.read_transcript(keys) == [b"out-1", b"in-2", b"out-2"]  # the newest 3
    keys = gate.keys("gh_a", "o_user", "msg:submitted")
    turn = await gate.begin(keys)
    assert isinstance(turn, Turn)
    await gate.commit(keys, turn, conversation=b"", reply="", transcript=[b"ignored"])
    assert await gate.read_transcript(keys) == []
