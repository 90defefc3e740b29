"""The outbox: replies pushed to residents through the customer-service API, in order.

Each resident has a FIFO list in Redis (``{prefix}outbox:{openid}``), one entry per reply (a
list of parts, each within WeChat's 2048-byte limit). Pushing appends to the list and makes
sure one drain job exists for that resident (job id ``outbox:{openid}``, so enqueueing it again
is a no-op). The drain job sends the head entry's parts, pops it, and carries on until the list
is empty; it completes only if the list is still empty at that moment (checked atomically), so
an entry appended meanwhile is never stranded. One drainer per resident means replies arrive in
the order they were written, and a failing head blocks the entries behind it instead of being
overtaken.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis.asyncio as aioredis

from state.job_queue import JobQueue
from state.message_gate import OutboxAppend
from state.redis_connection import LuaScript

JOB_DRAIN_OUTBOX = "wechat.send_text"
#: Undelivered replies are kept this long (WeChat's customer-service window is 48 hours).
OUTBOX_TTL_S = 7 * 24 * 3600


# Both change the head entry only if it is still the one the drainer read: a drainer that lost
# its job to another worker can then never drop or rewrite an entry it did not send.
_POP_HEAD_IF = """
if redis.call('LINDEX', KEYS[1], 0) == ARGV[1] then
  redis.call('LPOP', KEYS[1])
  return 1
end
return 0
"""
_REPLACE_HEAD_IF = """
if redis.call('LINDEX', KEYS[1], 0) == ARGV[1] then
  redis.call('LSET', KEYS[1], 0, ARGV[2])
  return 1
end
return 0
"""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One queued reply: its parts, and its stored form (to recognise it as the head later)."""

    raw: bytes
    parts: list[str]


class Outbox:
    """Appends replies to a resident's outbox and schedules its drain (see module docstring)."""

    def __init__(self, redis: aioredis.Redis, jobs: JobQueue, *, prefix: str) -> None:
        self._redis = redis
        self._jobs = jobs
        self._prefix = prefix
        self._pop_head = LuaScript(redis, _POP_HEAD_IF)
        self._replace_head = LuaScript(redis, _REPLACE_HEAD_IF)

    def key(self, openid: str) -> str:
        return f"{self._prefix}outbox:{openid}"

    def append(self, openid: str, parts: list[str]) -> OutboxAppend:
        """The list append that queues one reply (already split into parts) for ``openid``,
        for the message gate to perform within its commit; then call :meth:`schedule`."""
        entry = json.dumps(parts, ensure_ascii=False).encode()
        return OutboxAppend(key=self.key(openid), entry=entry, ttl_s=OUTBOX_TTL_S)

    async def push(self, openid: str, parts: list[str]) -> None:
        """Queue one reply (already split into parts) for ``openid`` on its own."""
        if not parts:
            return
        append = self.append(openid, parts)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(append.key, append.entry)
            pipe.expire(append.key, append.ttl_s)
            await pipe.execute()
        await self.schedule(openid)

    async def schedule(self, openid: str) -> None:
        """Make sure a drain job exists for ``openid`` (idempotent).

        If a process dies between queueing an entry and this, the entry waits for the
        resident's next pushed reply, whose scheduling drains it too.
        """
        await self._jobs.enqueue(JOB_DRAIN_OUTBOX, {"openid": openid}, job_id=f"outbox:{openid}")

    async def head(self, openid: str) -> OutboxEntry | None:
        """The oldest undelivered reply, or ``None`` when the outbox is empty."""
        raw = await self._redis.lindex(self.key(openid), 0)
        if raw is None:
            return None
        stored = raw if isinstance(raw, bytes) else raw.encode()
        return OutboxEntry(raw=stored, parts=[str(part) for part in json.loads(stored)])

    async def replace_head(self, openid: str, entry: OutboxEntry, unsent: list[str]) -> None:
        """Keep only the ``unsent`` parts of ``entry`` (some went out before a failure)."""
        await self._replace_head(
            keys=[self.key(openid)], args=[entry.raw, json.dumps(unsent, ensure_ascii=False)]
        )

    async def pop_head(self, openid: str, entry: OutboxEntry) -> bool:
        """Remove ``entry`` if it is still the head (``False``: someone else moved on)."""
        return bool(await self._pop_head(keys=[self.key(openid)], args=[entry.raw]))

    async def take_all(self, openid: str) -> list[list[str]]:
        """Remove and return every entry (when they can no longer be delivered)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lrange(self.key(openid), 0, -1)
            pipe.delete(self.key(openid))
            entries, _ = await pipe.execute()
        return [[str(part) for part in json.loads(raw)] for raw in entries]
