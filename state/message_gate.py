"""The Redis side of handling one inbound WeChat message: dedupe, per-user turns, state.

WeChat retries a push it got no answer to within 5 s (three times, same ``MsgId``), and one
resident's messages may reach different processes at once. For each message the edge calls:

1. :meth:`MessageGate.begin` — one round trip (a Lua script) that
   - records the message's dedupe key as ``pending``, or reports what an earlier delivery of the
     same message produced (:class:`Duplicate`);
   - takes a ticket in the resident's queue (``INCR``); tickets are served in order, so messages
     of one user are processed one at a time, in the order they reached Redis, across processes;
   - when it is this ticket's turn at once (the usual case), returns the stored conversation.
   A ``pending`` record names its delivery's ticket: a retry takes the message over only when
   that delivery cannot finish it (its turn passed without a commit, or it has held the turn
   past the lease), never from one still waiting in line.
2. :meth:`MessageGate.wait_turn` — only when another message of the same user is in progress:
   polls until this ticket's turn. A turn held longer than ``turn_lease_s`` is presumed dead (its
   process crashed) and skipped, so one crash cannot block a resident for good; a skipped turn
   that was alive after all finds at commit that it lost its turn and stores nothing. A message
   that gives up while waiting leaves the queue (``abandoned``) without letting later ones
   jump ahead of the message still running.
3. :meth:`MessageGate.commit` — one round trip: stores the new conversation (with its TTL, which
   is how a half-finished intake expires), appends this message's transcript entry to the
   intake's transcript list (append-only: a message costs the same late in an intake as early),
   records the reply under the dedupe key for retries, and passes the turn on.

So the usual message costs two Redis round trips. Dedupe records are kept ``dedupe_ttl_s``
(longer than WeChat's retry span of ~15 s).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from jiefen.errors import LockTimeout
from state.redis_connection import LuaScript, as_bytes, as_text

PENDING = "pending"
#: The dedupe value when the reply went out through the customer-service API, not passively.
PUSHED = "pushed"
_REPLY_PREFIX = "r:"

# Every script reads the time from Redis itself, so that hosts with skewed clocks agree on
# leases and ages.
_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# Moves ``serving`` past tickets whose message gave up (SREM'd from the abandoned set as it
# goes) and restarts the lease clock for whoever's turn it now is. Expects locals
# ``serving_key``, ``since_key``, ``abandoned_key``, ``queue_ttl``, ``serving`` and ``now``.
_STEP_OVER_ABANDONED = """
while redis.call('SREM', abandoned_key, tostring(serving + 1)) == 1 do
  serving = serving + 1
end
redis.call('SET', serving_key, tostring(serving), 'EX', queue_ttl)
redis.call('SET', since_key, tostring(now), 'EX', queue_ttl)
"""

# KEYS: dedupe, ticket, serving, turn-since, conversation, abandoned.
# ARGV: dedupe TTL (s), queue TTL (s), turn lease (ms).
_BEGIN = (
    _NOW
    + """
local dedupe_key, ticket_key, serving_key = KEYS[1], KEYS[2], KEYS[3]
local since_key, conversation_key, abandoned_key = KEYS[4], KEYS[5], KEYS[6]
local queue_ttl = ARGV[2]
local existing = redis.call('GET', dedupe_key)
if existing then
  local first = tonumber(string.match(existing, '^pending:%d+:(%d+)$') or '')
  if not first then return {'dup', existing} end
  -- Still pending. Take the message over only from a delivery that cannot finish it: its
  -- turn came and went without a commit, or it holds the turn past the lease (its process
  -- died). A delivery still waiting in the queue is alive: this is a retry of it.
  local serving = tonumber(redis.call('GET', serving_key) or '0')
  local since = tonumber(redis.call('GET', since_key) or '0')
  local passed = serving >= first
  local stalled = serving == first - 1 and now - since > tonumber(ARGV[3])
  if not (passed or stalled) then return {'dup', existing} end
end
local ticket = redis.call('INCR', ticket_key)
if ticket == 1 then
  -- A fresh queue (the old one expired): nothing of the old one may linger.
  redis.call('SET', serving_key, '0')
  redis.call('DEL', abandoned_key)
end
redis.call('EXPIRE', ticket_key, queue_ttl)
redis.call('EXPIRE', serving_key, queue_ttl)
local claim = 'pending:' .. now .. ':' .. ticket
redis.call('SET', dedupe_key, claim, 'EX', ARGV[1])
local serving = tonumber(redis.call('GET', serving_key) or '0')
if serving >= ticket - 1 then
  redis.call('SET', since_key, tostring(now), 'EX', queue_ttl)
  return {'go', tostring(ticket), redis.call('GET', conversation_key) or '', claim}
end
return {'wait', tostring(ticket), '', claim}
"""
)

# KEYS: serving, turn-since, conversation, abandoned, dedupe.
# ARGV: ticket, turn lease (ms), queue TTL (s), this delivery's claim.
_TRY_TURN = (
    _NOW
    + """
local serving_key, since_key, abandoned_key = KEYS[1], KEYS[2], KEYS[4]
local ticket = tonumber(ARGV[1])
local queue_ttl = ARGV[3]
if redis.call('GET', KEYS[5]) ~= ARGV[4] then
  return {'lost', ''}  -- a retry took the message over: it is not ours to handle any more
end
local serving = tonumber(redis.call('GET', serving_key) or '0')
if serving < ticket - 1 then
  local since = tonumber(redis.call('GET', since_key) or '0')
  if now - since > tonumber(ARGV[2]) then
    -- The turn's holder outlived its lease: presume its process dead and skip it.
    serving = serving + 1
"""
    + _STEP_OVER_ABANDONED
    + """
  end
end
if serving == ticket - 1 then
  redis.call('SET', since_key, tostring(now), 'EX', queue_ttl)
  return {'go', redis.call('GET', KEYS[3]) or ''}
end
if serving >= ticket then return {'lost', ''} end
return {'wait', ''}
"""
)

# KEYS: dedupe, conversation, serving, turn-since, abandoned, transcript, outbox ('' if none).
# ARGV: dedupe record, dedupe TTL (s), conversation, conversation TTL (s), ticket, queue TTL (s),
#       this delivery's claim, transcript cap, outbox entry ('' if none), outbox TTL (s),
#       then the new transcript entries.
_COMMIT = (
    _NOW
    + """
local serving_key, since_key, abandoned_key = KEYS[3], KEYS[4], KEYS[5]
local ticket = tonumber(ARGV[5])
local queue_ttl = ARGV[6]
local serving = tonumber(redis.call('GET', serving_key) or '0')
if serving ~= ticket - 1 or redis.call('GET', KEYS[1]) ~= ARGV[7] then
  -- Our turn was skipped (we outlived the lease) or a retry took the message over.
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if ARGV[3] == '' then
  -- No intake in progress: the conversation and its transcript go.
  redis.call('DEL', KEYS[2], KEYS[6])
else
  redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
  if #ARGV > 10 then
    redis.call('RPUSH', KEYS[6], unpack(ARGV, 11))
    redis.call('LTRIM', KEYS[6], -tonumber(ARGV[8]), -1)
  end
  redis.call('EXPIRE', KEYS[6], ARGV[4])
end
if ARGV[9] ~= '' then
  -- A pushed reply joins the resident's outbox before the turn passes on: replies are
  -- queued in the order their messages were handled.
  redis.call('RPUSH', KEYS[7], ARGV[9])
  redis.call('EXPIRE', KEYS[7], ARGV[10])
end
serving = ticket
"""
    + _STEP_OVER_ABANDONED
    + """
return 1
"""
)

# KEYS: dedupe, serving, turn-since, abandoned. ARGV: ticket, queue TTL (s), this delivery's claim.
_RELEASE = (
    _NOW
    + """
local serving_key, since_key, abandoned_key = KEYS[2], KEYS[3], KEYS[4]
local ticket = tonumber(ARGV[1])
local queue_ttl = ARGV[2]
if redis.call('GET', KEYS[1]) == ARGV[3] then
  redis.call('DEL', KEYS[1])  -- only our own claim: never a committed reply or a retry's claim
end
local serving = tonumber(redis.call('GET', serving_key) or '0')
if serving == ticket - 1 then
  -- It was our turn: pass it on.
  serving = ticket
"""
    + _STEP_OVER_ABANDONED
    + """
elseif serving < ticket - 1 then
  -- Still waiting: leave the queue without jumping it; our turn is skipped when it comes.
  redis.call('SADD', abandoned_key, tostring(ticket))
  redis.call('EXPIRE', abandoned_key, queue_ttl)
end
return 1
"""
)


@dataclass(frozen=True, slots=True)
class Duplicate:
    """An earlier delivery of this message exists. ``reply`` is its passive reply, if it had one.

    ``pending`` means the first delivery is still being handled; ``pushed`` that its reply went
    out through the customer-service API (so a retry must not repeat it).
    """

    pending: bool
    pushed: bool
    reply: str | None


@dataclass(frozen=True, slots=True)
class Turn:
    """This message's place in its user's queue.

    ``conversation`` is what is stored for the user (b'' if nothing).
    """

    ticket: int
    ready: bool
    conversation: bytes
    #: The pending record this delivery wrote; only its holder may commit or release it.
    claim: str


@dataclass(frozen=True, slots=True)
class OutboxAppend:
    """A pushed reply to append to a resident's outbox list as part of a commit."""

    key: str
    entry: bytes
    ttl_s: int


@dataclass(frozen=True, slots=True)
class GateKeys:
    dedupe: str
    ticket: str
    serving: str
    turn_since: str
    conversation: str
    abandoned: str
    transcript: str


class MessageGate:
    """Dedupe, per-user ordering and conversation storage for inbound messages (see module doc)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str,
        dedupe_ttl_s: int = 600,
        conversation_ttl_s: int = 7 * 24 * 3600,
        turn_lease_s: float = 30.0,
        poll_interval_s: float = 0.02,
        transcript_limit: int = 400,  # entries (one per message; one per line before)
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._dedupe_ttl_s = dedupe_ttl_s
        self._conversation_ttl_s = conversation_ttl_s
        self.turn_lease_s = turn_lease_s
        self._turn_lease_ms = int(turn_lease_s * 1000)
        self._poll_interval_s = poll_interval_s
        self._transcript_limit = transcript_limit
        self._queue_ttl_s = max(3600, int(turn_lease_s * 10))
        self._begin = LuaScript(redis, _BEGIN)
        self._try_turn = LuaScript(redis, _TRY_TURN)
        self._commit = LuaScript(redis, _COMMIT)
        self._release = LuaScript(redis, _RELEASE)

    def keys(self, account: str, openid: str, message_key: str) -> GateKeys:
        user = f"{self._prefix}user:{account}:{openid}:"
        return GateKeys(
            dedupe=f"{self._prefix}dedupe:{account}:{message_key}",
            ticket=user + "ticket",
            serving=user + "serving",
            turn_since=user + "turn-since",
            conversation=user + "conversation",
            abandoned=user + "abandoned",
            transcript=user + "transcript",
        )

    async def begin(self, keys: GateKeys) -> Duplicate | Turn:
        """Record the message and take a turn; see the module docstring."""
        result = await self._begin(
            keys=[
                keys.dedupe,
                keys.ticket,
                keys.serving,
                keys.turn_since,
                keys.conversation,
                keys.abandoned,
            ],
            args=[self._dedupe_ttl_s, self._queue_ttl_s, self._turn_lease_ms],
        )
        tag = as_text(result[0])
        if tag == "dup":
            return _duplicate(as_text(result[1]))
        return Turn(
            ticket=int(result[1]),
            ready=tag == "go",
            conversation=as_bytes(result[2]),
            claim=as_text(result[3]),
        )

    async def wait_turn(self, keys: GateKeys, turn: Turn, *, timeout_s: float) -> Turn:
        """Wait until ``turn`` may run; raise :class:`LockTimeout` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            tag, conversation = await self._try_turn(
                keys=[
                    keys.serving,
                    keys.turn_since,
                    keys.conversation,
                    keys.abandoned,
                    keys.dedupe,
                ],
                args=[turn.ticket, self._turn_lease_ms, self._queue_ttl_s, turn.claim],
            )
            if as_text(tag) == "go":
                return Turn(
                    ticket=turn.ticket,
                    ready=True,
                    conversation=as_bytes(conversation),
                    claim=turn.claim,
                )
            if as_text(tag) == "lost":
                raise LockTimeout(f"turn {turn.ticket} was skipped while waiting")
            if time.monotonic() >= deadline:
                raise LockTimeout(f"turn {turn.ticket} not reached in {timeout_s} s")
            await asyncio.sleep(self._poll_interval_s)

    async def commit(
        self,
        keys: GateKeys,
        turn: Turn,
        *,
        conversation: bytes,
        reply: str | None,
        transcript: Sequence[bytes] = (),
        push: OutboxAppend | None = None,
    ) -> None:
        """Store ``conversation`` (b'' deletes it and its transcript), append ``transcript``
        entries (keeping the newest ``transcript_limit``), keep ``reply`` for retries (``None``:
        it is pushed), append ``push`` to the resident's outbox, and pass the turn — atomically.

        Raises :class:`LockTimeout`, storing nothing, when the turn was skipped meanwhile (it
        outlived its lease): a later message may already have moved the conversation on.
        """
        record = PUSHED if reply is None else _REPLY_PREFIX + reply
        stored = await self._commit(
            keys=[
                keys.dedupe,
                keys.conversation,
                keys.serving,
                keys.turn_since,
                keys.abandoned,
                keys.transcript,
                push.key if push else "",
            ],
            args=[
                record,
                self._dedupe_ttl_s,
                conversation,
                self._conversation_ttl_s,
                turn.ticket,
                self._queue_ttl_s,
                turn.claim,
                self._transcript_limit,
                push.entry if push else b"",
                push.ttl_s if push else 0,
                *transcript,
            ],
        )
        if not stored:
            raise LockTimeout(f"turn {turn.ticket} was skipped before it could commit")

    async def read_transcript(self, keys: GateKeys) -> list[bytes]:
        """The transcript entries stored so far for this resident's intake, oldest first."""
        return [as_bytes(line) for line in await self._redis.lrange(keys.transcript, 0, -1)]

    async def mark_pushed(self, keys: GateKeys) -> None:
        """Record that the reply went out by push, so that a retry does not repeat it passively."""
        await self._redis.set(keys.dedupe, PUSHED, ex=self._dedupe_ttl_s)

    async def release(self, keys: GateKeys, turn: Turn) -> None:
        """Give up on a message without storing anything (it could not be handled).

        Its dedupe record goes, so WeChat's retry is handled afresh. If it held the turn, the
        turn passes on; if it was still waiting, it leaves the queue without letting later
        messages jump ahead of the one now running.
        """
        await self._release(
            keys=[keys.dedupe, keys.serving, keys.turn_since, keys.abandoned],
            args=[turn.ticket, self._queue_ttl_s, turn.claim],
        )

    async def read_dedupe(self, keys: GateKeys) -> Duplicate | None:
        value = await self._redis.get(keys.dedupe)
        return None if value is None else _duplicate(as_text(value))


def _duplicate(value: str) -> Duplicate:
    if value.startswith(PENDING):
        return Duplicate(pending=True, pushed=False, reply=None)
    if value == PUSHED:
        return Duplicate(pending=False, pushed=True, reply=None)
    return Duplicate(pending=False, pushed=False, reply=value.removeprefix(_REPLY_PREFIX))
