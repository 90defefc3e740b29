"""The job queue on the real Redis: leases, retries, dead letters, no double claims."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from state.job_queue import Completion, JobQueue


async def test_enqueue_claim_complete(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    queue = JobQueue(redis_client, prefix=redis_prefix)
    job_id = await queue.enqueue("wechat.send_text", {"openid": "o1", "texts": ["你好"]})
    job = await queue.claim()
    assert job is not None
    assert (job.job_id, job.kind, job.payload, job.attempts) == (
        job_id,
        "wechat.send_text",
        {"openid": "o1", "texts": ["你好"]},
        1,
    )
    assert await queue.claim() is None  # leased, not due again
    await queue.complete(job)
    assert await queue.pending_count() == 0


async def test_an_expired_lease_makes_the_job_claimable_again(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    queue = JobQueue(redis_client, prefix=redis_prefix, lease_s=0.1)
    await queue.enqueue("k", {})
    first = await queue.claim()
    await asyncio.sleep(0.15)  # the worker holding it "died"
    second = await queue.claim()
    assert first is not None and second is not None
    assert second.job_id == first.job_id and second.attempts == 2


async def test_retry_waits_and_keeps_the_errors_then_bury_moves_to_dead_letters(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    queue = JobQueue(redis_client, prefix=redis_prefix)
    await queue.enqueue("k", {"n": 1})
    job = await queue.claim()
    assert job is not None
    await queue.retry(job, delay_s=0.2, error="timeout")
    assert await queue.claim() is None
    await asyncio.sleep(0.25)
    again = await queue.claim()
    assert again is not None and again.errors == ["timeout"] and again.attempts == 2
    await queue.bury(again, error="45015 out of window")
    dead = await queue.dead_jobs()
    assert [(d["kind"], d["errors"]) for d in dead] == [("k", ["timeout", "45015 out of window"])]
    assert await queue.pending_count() == 0


async def test_same_job_id_is_enqueued_once(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    queue = JobQueue(redis_client, prefix=redis_prefix)
    await queue.enqueue("wechat.fetch_media", {"media_id": "m1"}, job_id="media:m1")
    await queue.enqueue("wechat.fetch_media", {"media_id": "m1"}, job_id="media:m1")
    assert await queue.pending_count() == 1


async def test_concurrent_workers_never_claim_the_same_job(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    queue = JobQueue(redis_client, prefix=redis_prefix)
    for n in range(20):
        await queue.enqueue("k", {"n": n})
    claims = await asyncio.gather(*(queue.claim() for _ in range(40)))
    claimed = [job.payload["n"] for job in claims if job is not None]
    assert sorted(claimed) == list(range(20))


async def test_a_worker_whose_lease_ran_out_cannot_settle_the_job(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    queue = JobQueue(redis_client, prefix=redis_prefix, lease_s=0.1)
    await queue.enqueue("k", {})
    slow = await queue.claim()
    await asyncio.sleep(0.15)
    fast = await queue.claim()  # the slow worker's lease ran out: another took the job
    assert slow is not None and fast is not None
    assert await queue.complete(slow) is Completion.NOT_OWNED
    assert not await queue.retry(slow, delay_s=0, error="late")
    assert not await queue.extend(slow)
    assert not await queue.bury(slow, error="late")
    assert await queue.complete(fast) is Completion.DONE
    assert await queue.pending_count() == 0 and await queue.dead_jobs() == []


async def test_complete_refuses_while_more_work_is_queued_for_the_job(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    queue = JobQueue(redis_client, prefix=redis_prefix)
    await queue.enqueue("drain", {}, job_id="outbox:o1")
    job = await queue.claim()
    assert job is not None
    work = f"{redis_prefix}outbox:o1"
    await redis_client.rpush(work, "one more")
    assert await queue.complete(job, unless_nonempty=work) is Completion.MORE_WORK
    await redis_client.delete(work)
    assert await queue.complete(job, unless_nonempty=work) is Completion.DONE


async def test_a_job_completed_and_enqueued_afresh_is_not_the_old_claimers(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    """Same job id, same attempt count: only the claim token tells the two claims apart."""
    queue = JobQueue(redis_client, prefix=redis_prefix, lease_s=0.1)
    await queue.enqueue("drain", {}, job_id="outbox:o1")
    old = await queue.claim()
    await asyncio.sleep(0.15)
    taken_over = await queue.claim()
    assert old is not None and taken_over is not None
    assert await queue.complete(taken_over) is Completion.DONE
    await queue.enqueue("drain", {}, job_id="outbox:o1")
    fresh = await queue.claim()
    assert fresh is not None and fresh.attempts == old.attempts == 1
    assert not await queue.extend(old)
    assert await queue.complete(old) is Completion.NOT_OWNED
    assert await queue.complete(fresh) is Completion.DONE
