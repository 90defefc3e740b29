"""Which media process hosts which room, agreed through Redis.

One Python process forwards media on one core, so a deployment runs several media processes
(``jiefen serve --role media``, one per core, on one or more hosts). A room's signalling and
media must all reach the one process that hosts it: its participants' connections, its
forwarding and its recording live in that process's memory. This module is how every process
agrees on that process, with nothing kept in any process's memory:

- **Nodes.** Each media process registers itself as a node: ``media:node:<id>`` is a hash of
  where browsers reach its signalling (``url``), how many rooms it should take (``capacity``)
  and how many it hosts now (``hosting``), with a TTL of :data:`NODE_TTL_S` that its heartbeat
  renews every :data:`HEARTBEAT_S`. A node whose key has expired is dead. ``media:nodes`` is the
  set of node ids (dead ones are pruned when seen).
- **Placement.** ``room:<id>:node`` names the node of a room. :meth:`MediaPlacement.place`
  (asked by the join page, through ``POST /rooms/placement``, before it opens its WebSocket)
  returns the room's node if it is alive, else picks the live node with the lowest load
  (rooms placed on it ÷ capacity) and reserves the room there for :data:`RESERVATION_TTL_S`.
  ``media:node:<id>:rooms`` is the set of rooms placed on or hosted by a node: its size is the
  node's load, so two placements at the same moment do not both pick the emptiest node.
- **Claim.** A node hosts a room only after :meth:`MediaPlacement.claim` succeeds, which it
  does unless another *live* node holds the room, or the claiming node is not registered
  itself. The host renews its claims with every heartbeat (:meth:`heartbeat`); a claim it finds
  taken by another node is reported back as lost, and the caller stops hosting the room.
- **Fencing.** A node that cannot renew its registration (Redis unreachable, its event loop
  stalled) stops hosting all its rooms by itself after :data:`FENCE_AFTER_S`, before the
  others may take it for dead at :data:`NODE_TTL_S`: so a room is not hosted by two processes
  at once. Should it happen anyway (a stall longer than that, during which the loop cannot run
  the fence), the recording's part files are created exclusively: the two write different
  parts, never one file.
- **Failover.** A killed node's heartbeat stops; within :data:`NODE_TTL_S` its rooms count as
  vacant, the next join is placed on a live node, and that node resumes the room from its live
  state in Redis (see :mod:`mediation_rooms.room_hub`). The page notices through its socket
  closing, or, when the host vanished without closing it (power, network), through its peer
  connection failing (ICE consent, some 15–30 s). The recordings directory must be storage
  every media process and worker shares (one host's disk, or a shared mount).

The scripts run atomically in Redis. They read keys derived from their arguments (node keys),
which standalone Redis and Sentinel allow; a Redis Cluster deployment would need the keys of a
deployment in one hash slot (a ``{…}`` hash tag in ``JIEFEN_REDIS_PREFIX``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis

from state.redis_connection import LuaScript, as_text

log = logging.getLogger(__name__)

#: A node that has not renewed its key for this long is dead (seconds).
NODE_TTL_S = 10
#: How often a live node renews its key and its rooms' claims (seconds).
HEARTBEAT_S = 3.0
#: A node that could not renew its key for this long stops hosting its rooms: a little before
#: the others may take it for dead (NODE_TTL_S), so that no room is ever hosted twice.
FENCE_AFTER_S = NODE_TTL_S - HEARTBEAT_S
#: A hosted room's claim lasts this long without renewal (several heartbeats).
CLAIM_TTL_S = 30
#: A room placed on a node but not yet joined stays reserved there this long.
RESERVATION_TTL_S = 120

# Returns the room's node: its current one while that node is alive, else the live node with
# the lowest load, now reserved for the room; false when no node is alive.
# KEYS: room key, nodes set. ARGV: key prefix, room id, reservation TTL.
_PLACE = """
local owner = redis.call('GET', KEYS[1])
if owner and redis.call('EXISTS', ARGV[1] .. 'media:node:' .. owner) == 1 then
  return owner
end
local best, best_load = nil, nil
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local node = ARGV[1] .. 'media:node:' .. id
  local capacity = tonumber(redis.call('HGET', node, 'capacity'))
  if capacity then
    local load = redis.call('SCARD', node .. ':rooms') / math.max(capacity, 1)
    if best == nil or load < best_load or (load == best_load and id < best) then
      best, best_load = id, load
    end
  else
    redis.call('SREM', KEYS[2], id)
    redis.call('DEL', node .. ':rooms')
  end
end
if best == nil then return false end
if owner then redis.call('SREM', ARGV[1] .. 'media:node:' .. owner .. ':rooms', ARGV[2]) end
redis.call('SET', KEYS[1], best, 'EX', tonumber(ARGV[3]))
redis.call('SADD', ARGV[1] .. 'media:node:' .. best .. ':rooms', ARGV[2])
return best
"""

# Makes ARGV[3] the room's node unless another live node holds it; returns that node or false.
# A node that is not registered (its key expired: it was taken for dead) claims nothing.
# KEYS: room key. ARGV: key prefix, room id, node id, claim TTL.
_CLAIM = """
if redis.call('EXISTS', ARGV[1] .. 'media:node:' .. ARGV[3]) == 0 then
  return 'unregistered:' .. ARGV[3]
end
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[3] then
  if redis.call('EXISTS', ARGV[1] .. 'media:node:' .. owner) == 1 then return owner end
  redis.call('SREM', ARGV[1] .. 'media:node:' .. owner .. ':rooms', ARGV[2])
end
redis.call('SET', KEYS[1], ARGV[3], 'EX', tonumber(ARGV[4]))
redis.call('SADD', ARGV[1] .. 'media:node:' .. ARGV[3] .. ':rooms', ARGV[2])
return false
"""

# Renews the claims of the rooms ARGV[4..] hosted by node ARGV[2]; forgets the node's
# reservations that lapsed; returns the hosted rooms whose claim another node now holds.
# KEYS: the node's rooms set. ARGV: key prefix, node id, claim TTL, hosted room ids...
_RENEW = """
local hosted, lost = {}, {}
for i = 4, #ARGV do
  local room = ARGV[i]
  hosted[room] = true
  local key = ARGV[1] .. 'room:' .. room .. ':node'
  local owner = redis.call('GET', key)
  if owner == false or owner == ARGV[2] then
    redis.call('SET', key, ARGV[2], 'EX', tonumber(ARGV[3]))
    redis.call('SADD', KEYS[1], room)
  else
    table.insert(lost, room)
  end
end
for _, room in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not hosted[room] and redis.call('GET', ARGV[1] .. 'room:' .. room .. ':node') ~= ARGV[2] then
    redis.call('SREM', KEYS[1], room)
  end
end
for _, room in ipairs(lost) do redis.call('SREM', KEYS[1], room) end
return lost
"""

# Gives the room up if node ARGV[2] holds it. KEYS: room key, the node's rooms set.
# ARGV: room id, node id.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[2] then redis.call('DEL', KEYS[1]) end
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""


class NoMediaNode(Exception):
    """No media process is alive to host a room."""


@dataclass(frozen=True, slots=True)
class MediaNode:
    """One media process, as its peers and the join page see it."""

    node_id: str
    #: The signalling WebSocket URL browsers use for rooms on this node (``ws://…/rooms/ws``,
    #: or ``/rooms/ws`` on the join page's own origin).
    signalling_url: str
    #: How many rooms this node should take before others are preferred.
    capacity: int


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """A live node and its load, for operators."""

    node: MediaNode
    hosting: int
    placed: int
    started_at: float


def signalling_url_for(public_url: str) -> str:
    """The signalling WebSocket URL of a process reached at ``public_url``; for ``""`` (the
    join page's own origin) the path alone, which the page resolves against its location."""
    base = public_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base.removeprefix("https://")
    elif base.startswith("http://"):
        base = "ws://" + base.removeprefix("http://")
    return base + "/rooms/ws"


class MediaPlacement:
    """The Redis-side agreement on rooms and media nodes (see the module docstring)."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._place = LuaScript(redis, _PLACE)
        self._claim = LuaScript(redis, _CLAIM)
        self._renew = LuaScript(redis, _RENEW)
        self._release = LuaScript(redis, _RELEASE)

    def node_key(self, node_id: str) -> str:
        return f"{self.prefix}media:node:{node_id}"

    def rooms_key(self, node_id: str) -> str:
        """The rooms placed on or hosted by ``node_id`` (its load)."""
        return f"{self.node_key(node_id)}:rooms"

    def room_key(self, room_id: str) -> str:
        return f"{self.prefix}room:{room_id}:node"

    @property
    def nodes_key(self) -> str:
        return f"{self.prefix}media:nodes"

    # -- the web side -------------------------------------------------------------------------

    async def place(self, room_id: str) -> MediaNode:
        """The live node that hosts ``room_id`` or is now reserved for it; raises NoMediaNode."""
        node_id = await self._place(
            keys=[self.room_key(room_id), self.nodes_key],
            args=[self.prefix, room_id, RESERVATION_TTL_S],
        )
        if not node_id:
            raise NoMediaNode("no media process is running")
        node = await self.node(as_text(node_id))
        if node is None:  # died between the script and now: the next ask places it again
            raise NoMediaNode(f"media node {as_text(node_id)} just went away")
        return node

    async def node(self, node_id: str) -> MediaNode | None:
        """The live node ``node_id``, or None when it is dead or unknown."""
        info = await self._node_info(node_id)
        return None if info is None else _node_from(node_id, info)

    async def nodes(self) -> list[NodeStatus]:
        """Every live node with its load, in id order."""
        statuses = []
        for node_id in sorted(as_text(i) for i in await self.redis.smembers(self.nodes_key)):
            info = await self._node_info(node_id)
            if info is None:
                continue
            statuses.append(
                NodeStatus(
                    node=_node_from(node_id, info),
                    hosting=int(info.get("hosting", 0)),
                    placed=int(await self.redis.scard(self.rooms_key(node_id))),
                    started_at=float(info.get("started_at", 0)),
                )
            )
        return statuses

    async def _node_info(self, node_id: str) -> dict[str, str] | None:
        fields = await self.redis.hgetall(self.node_key(node_id))
        return {as_text(k): as_text(v) for k, v in fields.items()} if fields else None

    # -- the media side -----------------------------------------------------------------------

    async def register(self, node: MediaNode, *, hosting: int = 0) -> None:
        """Announce ``node`` as alive for the next :data:`NODE_TTL_S` seconds."""
        key = self.node_key(node.node_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "url": node.signalling_url,
                    "capacity": node.capacity,
                    "hosting": hosting,
                },
            )
            pipe.hsetnx(key, "started_at", time.time())
            pipe.expire(key, NODE_TTL_S)
            pipe.sadd(self.nodes_key, node.node_id)
            await pipe.execute()

    async def claim(self, room_id: str, node_id: str) -> str | None:
        """Make ``node_id`` the room's host; returns the other live node holding it, if any
        (``unregistered:<node_id>`` when ``node_id`` itself is not registered as alive)."""
        owner = await self._claim(
            keys=[self.room_key(room_id)], args=[self.prefix, room_id, node_id, CLAIM_TTL_S]
        )
        return as_text(owner) if owner else None

    async def heartbeat(self, node: MediaNode, hosted: Iterable[str]) -> list[str]:
        """Renew the node and its hosted rooms' claims; returns the rooms another node took."""
        rooms = list(hosted)
        await self.register(node, hosting=len(rooms))
        lost = await self._renew(
            keys=[self.rooms_key(node.node_id)],
            args=[self.prefix, node.node_id, CLAIM_TTL_S, *rooms],
        )
        return [as_text(room) for room in lost]

    async def release(self, room_id: str, node_id: str) -> None:
        """``node_id`` no longer hosts ``room_id`` (ended, or empty for a while)."""
        await self._release(
            keys=[self.room_key(room_id), self.rooms_key(node_id)],
            args=[room_id, node_id],
        )

    async def deregister(self, node_id: str, hosted: Iterable[str]) -> None:
        """A clean shutdown: the node's rooms become vacant at once, not after the TTL."""
        for room_id in hosted:
            await self.release(room_id, node_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.node_key(node_id), self.rooms_key(node_id))
            pipe.srem(self.nodes_key, node_id)
            await pipe.execute()


class NodeHeartbeat:
    """Keeps one media node registered while it runs, and reports rooms it lost."""

    def __init__(
        self,
        placement: MediaPlacement,
        node: MediaNode,
        *,
        hosted: Callable[[], Iterable[str]],
        on_lost: Callable[[str], Awaitable[None]],
        interval_s: float = HEARTBEAT_S,
        fence_after_s: float = FENCE_AFTER_S,
    ) -> None:
        self.placement = placement
        self.node = node
        self._hosted = hosted
        self._on_lost = on_lost
        self._interval_s = interval_s
        self._fence_after_s = fence_after_s
        self._task: asyncio.Task[None] | None = None
        self._handing_over: set[asyncio.Future[None]] = set()
        #: When the node's registration was last renewed (monotonic clock).
        self.renewed_at = time.monotonic()

    async def start(self) -> None:
        """Register now (a node is placeable as soon as it serves) and renew in the background."""
        await self.placement.register(self.node)
        self.renewed_at = time.monotonic()
        self._task = asyncio.create_task(self._run(), name=f"media-node-{self.node.node_id}")

    async def stop(self) -> None:
        """Stop renewing and deregister: this node's rooms are vacant at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.placement.deregister(self.node.node_id, list(self._hosted()))

    async def beat(self, timeout_s: float | None = None) -> None:
        """One renewal, within ``timeout_s`` (default: one interval); rooms another node has
        taken over are handed to ``on_lost`` (each in its own task: the next beat must not
        wait for them)."""
        hosted = list(self._hosted())
        started = time.monotonic()  # the TTL runs from no earlier than this
        async with asyncio.timeout(timeout_s if timeout_s is not None else self._interval_s):
            lost = await self.placement.heartbeat(self.node, hosted)
            # A room let go while this beat was under way had its claim renewed: drop it again.
            now_hosted = set(self._hosted())
            for room_id in hosted:
                if room_id not in now_hosted and room_id not in lost:
                    await self.placement.release(room_id, self.node.node_id)
        self.renewed_at = started
        for room_id in lost:
            log.error(
                "room %s: another media node took it over; this node stops hosting it", room_id
            )
            self._spawn(self._on_lost(room_id))

    def _until_fence(self) -> float:
        return self.renewed_at + self._fence_after_s - time.monotonic()

    def _bounded_by_fence(self, seconds: float) -> float:
        remaining = self._until_fence()
        return seconds if remaining <= 0 else min(seconds, remaining)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._handing_over.add(task)
        task.add_done_callback(self._handing_over.discard)

    async def _run(self) -> None:
        while True:
            # Never sleep or wait past the fencing deadline (it must be checked in time), but
            # once past it (fenced: Redis away), go at the normal pace.
            await asyncio.sleep(self._bounded_by_fence(self._interval_s))
            try:
                await self.beat(timeout_s=max(0.1, self._bounded_by_fence(self._interval_s)))
            except Exception:
                # Redis unreachable or slow: try again; the TTLs give a few beats' slack.
                log.exception("media node %s: heartbeat failed", self.node.node_id)
            if self._until_fence() <= 0:
                # By now the other processes may take this one for dead and place its rooms
                # elsewhere: stop hosting them here rather than record any room twice.
                hosted = list(self._hosted())
                if hosted:
                    log.error(
                        "media node %s: not renewed for %.0f s; handing over %d room(s)",
                        self.node.node_id,
                        time.monotonic() - self.renewed_at,
                        len(hosted),
                    )
                for room_id in hosted:
                    self._spawn(self._on_lost(room_id))


def _node_from(node_id: str, info: dict[str, str]) -> MediaNode:
    return MediaNode(node_id=node_id, signalling_url=info["url"], capacity=int(info["capacity"]))
