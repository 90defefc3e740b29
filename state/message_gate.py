"""The Redis side of handling one inbound WeChat message: dedupe, per-user turns, state.

WeChat retries a push it got no answer to within 5 s (three times, same ``MsgId``), and one
resident's messages may reach different processes at once. For each message the edge calls:

1. :meth:`MessageGate.begin` — one round trip (a Lua script) that
   - records the message's dedupe key as ``pending``, or reports what an earlier delivery of the
     same message produced (:class:`Duplicate`);
   - takes a ticket in the resident's queue (``INCR``); tickets are served in order, so messages
     of one user are processed one at a time, in the order they reached Redis, across processes;
   - when it is this ticket's turn at once (the usual case), returns the stored conversation.
   A record still ``pending`` after a whole turn lease belonged to a process that died: the
   retry takes the message over instead of waiting for an answer that will never come.
2. :meth:`MessageGate.wait_turn` — only when another message of the same user is in progress:
   polls until this ticket's turn. A turn held longer than ``turn_lease_s`` is presumed dead (its
   process crashed) and skipped, so one crash cannot block a resident for good; a skipped turn
   that was alive after all finds at commit that it lost its turn and stores nothing. A message
   that gives up while waiting leaves the queue (``abandoned``) without letting later ones
   jump ahead of the message still running.
3. :meth:`MessageGate.commit` — one round trip: stores the new conversation (with its TTL, which
   is how a half-finished intake expires), records the reply under the dedupe key for retries,
   and passes the turn on.

So the usual message costs two Redis round trips. Dedupe records are kept ``dedupe_ttl_s``
(longer than WeChat's retry span of ~15 s).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from jiefen.errors import LockTimeout
from state.redis_connection import LuaScript

PENDING = "pending"
#: The dedupe value when the reply went out through the customer-service API, not passively.
PUSHED = "pushed"
_REPLY_PREFIX = "r:"

# Moves ``serving`` past tickets whose message gave up (SREM'd from the abandoned set as it
# goes) and restarts the lease clock for whoever's turn it now is. KEYS: serving, turn-since,
# abandoned; expects local ``serving`` and ``now``.
_STEP_OVER_ABANDONED = """
while redis.call('SREM', abandoned_key, tostring(serving + 1)) == 1 do
  serving = serving + 1
end
redis.call('SET', serving_key, tostring(serving), 'EX', queue_ttl)
redis.call('SET', since_key, tostring(now), 'EX', queue_ttl)
"""

_BEGIN = """
local existing = redis.call('GET', KEYS[1])
if existing then
  local started = tonumber(string.match(existing, '^pending:(%d+)$') or '')
  -- A first delivery still "pending" after a whole lease died with its process: take over.
  if not started or tonumber(ARGV[2]) - started <= tonumber(ARGV[4]) then
    return {'dup', existing}
  end
end
redis.call('SET', KEYS[1], 'pending:' .. ARGV[2], 'EX', ARGV[1])
local ticket = redis.call('INCR', KEYS[2])
if ticket == 1 then redis.call('SET', KEYS[3], '0') end
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[3])
local serving = tonumber(redis.call('GET', KEYS[3]) or '0')
if serving >= ticket - 1 then
  redis.call('SET', KEYS[4], ARGV[2], 'EX', ARGV[3])
  return {'go', tostring(ticket), redis.call('GET', KEYS[5]) or ''}
end
return {'wait', tostring(ticket), ''}
"""

_TRY_TURN = (
    """
local serving_key, since_key, abandoned_key = KEYS[1], KEYS[2], KEYS[4]
local ticket = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local queue_ttl = ARGV[4]
local serving = tonumber(redis.call('GET', serving_key) or '0')
if serving < ticket - 1 then
  local since = tonumber(redis.call('GET', since_key) or '0')
  if now - since > tonumber(ARGV[3]) then
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

_COMMIT = (
    """
local serving_key, since_key, abandoned_key = KEYS[3], KEYS[4], KEYS[5]
local ticket = tonumber(ARGV[5])
local queue_ttl = ARGV[6]
local now = tonumber(ARGV[7])
local serving = tonumber(redis.call('GET', serving_key) or '0')
if serving ~= ticket - 1 then
  -- Our turn was skipped (we outlived the lease): someone else may have moved on.
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if ARGV[3] == '' then
  redis.call('DEL', KEYS[2])
else
  redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
end
serving = ticket
"""
    + _STEP_OVER_ABANDONED
    + """
return 1
"""
)

_RELEASE = (
    """
local serving_key, since_key, abandoned_key = KEYS[2], KEYS[3], KEYS[4]
local ticket = tonumber(ARGV[1])
local queue_ttl = ARGV[2]
local now = tonumber(ARGV[3])
redis.call('DEL', KEYS[1])
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


@dataclass(frozen=True, slots=True)
class GateKeys:
    dedupe: str
    ticket: str
    serving: str
    turn_since: str
    conversation: str
    abandoned: str


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
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._dedupe_ttl_s = dedupe_ttl_s
        self._conversation_ttl_s = conversation_ttl_s
        self._turn_lease_ms = int(turn_lease_s * 1000)
        self._poll_interval_s = poll_interval_s
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
        )

    async def begin(self, keys: GateKeys) -> Duplicate | Turn:
        """Record the message and take a turn; see the module docstring."""
        result = await self._begin(
            keys=[keys.dedupe, keys.ticket, keys.serving, keys.turn_since, keys.conversation],
            args=[self._dedupe_ttl_s, _now_ms(), self._queue_ttl_s, self._turn_lease_ms],
        )
        tag = _text(result[0])
        if tag == "dup":
            return _duplicate(_text(result[1]))
        return Turn(ticket=int(result[1]), ready=tag == "go", conversation=_bytes(result[2]))

    async def wait_turn(self, keys: GateKeys, turn: Turn, *, timeout_s: float) -> Turn:
        """Wait until ``turn`` may run; raise :class:`LockTimeout` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            tag, conversation = await self._try_turn(
                keys=[keys.serving, keys.turn_since, keys.conversation, keys.abandoned],
                args=[turn.ticket, _now_ms(), self._turn_lease_ms, self._queue_ttl_s],
            )
            if _text(tag) == "go":
                return Turn(ticket=turn.ticket, ready=True, conversation=_bytes(conversation))
            if _text(tag) == "lost":
                raise LockTimeout(f"turn {turn.ticket} was skipped while waiting")
            if time.monotonic() >= deadline:
                raise LockTimeout(f"turn {turn.ticket} not reached in {timeout_s} s")
            await asyncio.sleep(self._poll_interval_s)

    async def commit(
        self, keys: GateKeys, turn: Turn, *, conversation: bytes, reply: str | None
    ) -> None:
        """Store ``conversation`` (b'' deletes it), keep ``reply`` for retries, pass the turn.

        Raises :class:`LockTimeout`, storing nothing, when the turn was skipped meanwhile (it
        outlived its lease): a later message may already have moved the conversation on.
        """
        record = PUSHED if reply is None else _REPLY_PREFIX + reply
        stored = await self._commit(
            keys=[keys.dedupe, keys.conversation, keys.serving, keys.turn_since, keys.abandoned],
            args=[
                record,
                self._dedupe_ttl_s,
                conversation,
                self._conversation_ttl_s,
                turn.ticket,
                self._queue_ttl_s,
                _now_ms(),
            ],
        )
        if not stored:
            raise LockTimeout(f"turn {turn.ticket} was skipped before it could commit")

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
            args=[turn.ticket, self._queue_ttl_s, _now_ms()],
        )

    async def read_dedupe(self, keys: GateKeys) -> Duplicate | None:
        value = await self._redis.get(keys.dedupe)
        return None if value is None else _duplicate(_text(value))


def _duplicate(value: str) -> Duplicate:
    if value.startswith(PENDING):
        return Duplicate(pending=True, pushed=False, reply=None)
    if value == PUSHED:
        return Duplicate(pending=False, pushed=True, reply=None)
    return Duplicate(pending=False, pushed=False, reply=value.removeprefix(_REPLY_PREFIX))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _now_ms() -> int:
    return int(time.time() * 1000)
