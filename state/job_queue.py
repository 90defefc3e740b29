"""A small reliable job queue in Redis: at-least-once, with leases, retries and a dead letter.

Layout under ``{prefix}jobs:``:

- ``data`` — hash ``job_id -> JSON`` of every live job (kind, payload, attempts, last error);
- ``due`` — sorted set ``job_id -> when it may next run`` (epoch seconds). Claiming a job moves
  its score forward by the lease, so a worker that dies mid-job lets another retry it after the
  lease ends (hence at-least-once: handlers must be idempotent);
- ``dead`` — list of jobs that failed for good (JSON with the reason), for an operator to read.

Everything lives in Redis, so any number of workers in any number of processes share the queue.
"""

from __future__ import annotations

import enum
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from state.redis_connection import LuaScript, as_text

_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
if #ids == 0 then return false end
local id = ids[1]
local raw = redis.call('HGET', KEYS[2], id)
if not raw then redis.call('ZREM', KEYS[1], id); return false end
redis.call('ZADD', KEYS[1], ARGV[1] + ARGV[2], id)
local job = cjson.decode(raw)
job['attempts'] = (job['attempts'] or 0) + 1
job['claim'] = ARGV[3]
raw = cjson.encode(job)
redis.call('HSET', KEYS[2], id, raw)
return {id, raw}
"""


# Settling a job (complete / retry / bury / extend) is allowed only to the worker that claimed it
# last: the stored claim token must still be the one it got. A worker whose lease ran out (and
# whose job another worker has claimed since, or which was completed and enqueued afresh under
# the same id) thus cannot overwrite the newer state.
_OWNED = """
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return -1 end
local job = cjson.decode(raw)
if job['claim'] ~= ARGV[2] then return -1 end
"""

_COMPLETE = (
    _OWNED
    + """
if KEYS[3] ~= '' and redis.call('LLEN', KEYS[3]) > 0 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""
)

_RESCHEDULE = (
    _OWNED
    + """
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
return 1
"""
)

_BURY = (
    _OWNED
    + """
redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""
)

_EXTEND = (
    _OWNED
    + """
redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
return 1
"""
)


class Completion(enum.Enum):
    DONE = "done"
    MORE_WORK = "more_work"
    NOT_OWNED = "not_owned"


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed job. ``attempts`` counts this one (1 on the first run)."""

    job_id: str
    kind: str
    payload: dict[str, Any]
    attempts: int
    enqueued_at: float
    errors: list[str] = field(default_factory=list)
    #: Proof of ownership: the token this claim wrote into the job.
    claim: str = ""


class JobQueue:
    """Enqueue, claim and settle jobs (see the module docstring for the guarantees)."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str, lease_s: float = 60.0) -> None:
        self._redis = redis
        self._due = f"{prefix}jobs:due"
        self._data = f"{prefix}jobs:data"
        self._dead = f"{prefix}jobs:dead"
        self._lease_s = lease_s
        self._claim = LuaScript(redis, _CLAIM)
        self._complete = LuaScript(redis, _COMPLETE)
        self._reschedule = LuaScript(redis, _RESCHEDULE)
        self._bury = LuaScript(redis, _BURY)
        self._extend = LuaScript(redis, _EXTEND)

    async def enqueue(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        delay_s: float = 0.0,
        job_id: str | None = None,
    ) -> str:
        """Add a job; a given ``job_id`` makes the enqueue idempotent (an existing job is kept)."""
        job_id = job_id or uuid.uuid4().hex
        now = time.time()
        record = {"kind": kind, "payload": payload, "attempts": 0, "at": now, "errors": []}
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(self._data, job_id, json.dumps(record, ensure_ascii=False))
            pipe.zadd(self._due, {job_id: now + delay_s}, nx=True)
            await pipe.execute()
        return job_id

    async def claim(self) -> Job | None:
        """Take the next due job under a lease, or ``None`` when nothing is due."""
        claimed = await self._claim(
            keys=[self._due, self._data], args=[time.time(), self._lease_s, uuid.uuid4().hex]
        )
        if not claimed:
            return None
        job_id, raw = claimed
        return _job_from_record(as_text(job_id), raw)

    async def complete(self, job: Job, *, unless_nonempty: str | None = None) -> Completion:
        """Remove a finished ``job`` (``DONE``). ``MORE_WORK`` (the job stays) when the list
        ``unless_nonempty`` has items; ``NOT_OWNED`` when this worker no longer owns the job
        (its lease ran out and another worker claimed it)."""
        code = await self._complete(
            keys=[self._due, self._data, unless_nonempty or ""], args=[job.job_id, job.claim]
        )
        return {1: Completion.DONE, 0: Completion.MORE_WORK}.get(int(code), Completion.NOT_OWNED)

    async def retry(self, job: Job, *, delay_s: float, error: str) -> bool:
        """Run ``job`` again after ``delay_s``, remembering ``error`` (``False``: not owned)."""
        record = json.dumps(_record(job, error), ensure_ascii=False)
        return _succeeded(
            await self._reschedule(
                keys=[self._due, self._data],
                args=[job.job_id, job.claim, record, time.time() + delay_s],
            )
        )

    async def extend(self, job: Job) -> bool:
        """Renew the lease of a long-running ``job`` (``False``: not owned any more)."""
        return _succeeded(
            await self._extend(
                keys=[self._due, self._data],
                args=[job.job_id, job.claim, time.time() + self._lease_s],
            )
        )

    async def bury(self, job: Job, *, error: str) -> bool:
        """Give up on ``job``: move it to the dead-letter list with the reason."""
        record = _record(job, error) | {"job_id": job.job_id, "buried_at": time.time()}
        return _succeeded(
            await self._bury(
                keys=[self._due, self._data, self._dead],
                args=[job.job_id, job.claim, json.dumps(record, ensure_ascii=False)],
            )
        )

    @property
    def lease_s(self) -> float:
        """How long a claimed job stays the claimer's without being extended."""
        return self._lease_s

    async def pending_count(self) -> int:
        return int(await self._redis.zcard(self._due))

    async def dead_jobs(self) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in await self._redis.lrange(self._dead, 0, -1)]


def _record(job: Job, error: str) -> dict[str, Any]:
    return {
        "kind": job.kind,
        "payload": job.payload,
        "attempts": job.attempts,
        "at": job.enqueued_at,
        "errors": [*job.errors, error][-10:],
        "claim": job.claim,
    }


def _job_from_record(job_id: str, raw: bytes | str) -> Job:
    record = json.loads(raw)
    # cjson encodes an empty Lua table as an object; normalise the list fields.
    errors = record.get("errors") or []
    return Job(
        job_id=job_id,
        kind=str(record["kind"]),
        payload=dict(record.get("payload") or {}),
        attempts=int(record["attempts"]),
        enqueued_at=float(record["at"]),
        errors=list(errors) if isinstance(errors, list) else [],
        claim=str(record.get("claim") or ""),
    )


def _succeeded(code: object) -> bool:
    """The settle scripts answer 1 when done, -1 when the job is not the caller's any more."""
    return code == 1
