"""The outbox on real Redis and the fake WeChat API: order kept, nothing sent twice or lost,
even when a drainer outlives its lease and another worker takes over."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import create_async_engine

from bot.background_jobs import BackgroundJobs, RetryPolicy
from bot.fake_wechat_api import CUSTOM_SEND_PATH, FakeWeChatAPI, running_fake_wechat_api
from bot.outbox import Outbox
from bot.wechat_api import WeChatAPIClient
from config.settings import DEV_WECHAT_APPID, DEV_WECHAT_SECRET
from state.blob_store import LocalBlobStore
from state.job_queue import JobQueue
from tests.harness import eventually

OPENID = "o_outbox"


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeWeChatAPI, str]]:
    async with running_fake_wechat_api() as served:
        yield served


def _workers(
    count: int,
    redis: aioredis.Redis,
    prefix: str,
    session: aiohttp.ClientSession,
    api_base: str,
    tmp_path: Path,
    *,
    lease_s: float,
) -> tuple[Outbox, list[BackgroundJobs]]:
    jobs = JobQueue(redis, prefix=prefix, lease_s=lease_s)
    outbox = Outbox(redis, jobs, prefix=prefix)
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}")
    workers = [
        BackgroundJobs(
            jobs=jobs,
            outbox=outbox,
            wechat=WeChatAPIClient(
                session,
                redis,
                api_base=api_base,
                appid=DEV_WECHAT_APPID,
                secret=DEV_WECHAT_SECRET,
                key_prefix=prefix,
                request_timeout=5.0,
                max_attempts=1,
            ),
            db=engine,
            evidence=LocalBlobStore(tmp_path),
            max_media_bytes=1024,
            retry=RetryPolicy(base_delay_s=0.05, max_delay_s=0.1),
        )
        for _ in range(count)
    ]
    return outbox, workers


def _sends_seen(api: FakeWeChatAPI, count: int) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return api.requests_to(CUSTOM_SEND_PATH) >= count

    return probe


async def test_replies_go_out_once_each_and_in_order_when_a_drainer_loses_its_lease(
    fake: tuple[FakeWeChatAPI, str],
    redis_client: aioredis.Redis,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    api, api_base = fake
    async with aiohttp.ClientSession() as session:
        outbox, (first, second) = _workers(
            2, redis_client, redis_prefix, session, api_base, tmp_path, lease_s=0.3
        )
        await outbox.push(OPENID, ["E1-part1", "E1-part2"])
        await outbox.push(OPENID, ["E2"])
        # The first send takes longer than the lease: the second worker claims the drain.
        api.fail_next(CUSTOM_SEND_PATH, delay=0.5)
        slow = asyncio.create_task(first.run_once())
        # Wait for the slow send to reach the API rather than for a fixed time: on a loaded
        # machine the first worker may claim later than a fixed sleep allowed for, and the
        # second would then have claimed the drain first.
        assert await eventually(_sends_seen(api, 1), wait_s=5)
        # The drain is due again once the lease ran out (or, cut off, it was retried): the
        # second worker claims it within a moment.
        assert await eventually(second.run_once, wait_s=5)
        await slow

        async def finished() -> bool:  # whatever is left (a retried or re-claimed drain)
            await first.run_once()
            return await outbox.head(OPENID) is None

        assert await eventually(finished, wait_s=10)
    sent = [message.content for message in api.sent if message.touser == OPENID]
    # The slow drainer's send was cut off at the end of its lease (a drainer never acts past
    # it) and the second worker sent everything: each part once, in order, E2 not skipped.
    assert api.requests_to(CUSTOM_SEND_PATH) == 4  # the cut-off attempt, then three sends
    assert sent == ["E1-part1", "E1-part2", "E2"], sent
    assert await outbox.head(OPENID) is None


async def test_an_undeliverable_outbox_goes_to_the_dead_letters_whole(
    fake: tuple[FakeWeChatAPI, str],
    redis_client: aioredis.Redis,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    api, api_base = fake
    api.out_of_window(OPENID)
    async with aiohttp.ClientSession() as session:
        outbox, (worker,) = _workers(
            1, redis_client, redis_prefix, session, api_base, tmp_path, lease_s=5
        )
        await outbox.push(OPENID, ["第一条"])
        await outbox.push(OPENID, ["第二条", "第二条续"])
        assert await worker.run_once()
        dead = await JobQueue(redis_client, prefix=redis_prefix).dead_jobs()
    assert len(dead) == 1 and "45015" in dead[0]["errors"][-1]
    assert dead[0]["payload"]["undelivered"] == [["第一条"], ["第二条", "第二条续"]]
    assert await outbox.head(OPENID) is None and api.sent == []
