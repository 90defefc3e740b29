"""Which media process hosts which room, agreed through Redis.

One Python process forwards media on one core, so a deployment runs several media processes
(``jiefen serve --role media``, one per core, on one or more hosts). A room's signalling and
media must all reach the one process that hosts it: its participants' connections, its
forwarding and its recording live in that process's memory. This module is how every process
agrees on that process, with nothing kept in any process's memory:

- **Nodes.** Each media process registers itself as a node: ``media:node:<id>`` is a hash of
  where browsers reach its signalling (``url``), how many rooms it should take (``capacity``),
  how many it hosts now (``hosting``) and which process start it is (``instance``, random per
  start), with a TTL of :data:`NODE_TTL_S` that its heartbeat renews every :data:`HEARTBEAT_S`.
  A node whose key has expired is dead. ``media:nodes`` is the set of node ids (dead ones are
  pruned when seen).
- **One id, one process.** Claims name the node id only, so two live processes under one id
  (containers with a fixed hostname, the same ``JIEFEN_MEDIA_NODE_ID``) would share rooms and
  load unnoticed. The instance token tells them apart: registration is refused
  (:class:`NodeIdInUse`) while another instance's key under the id is *renewed*; a key that
  only runs out (a process that was killed and is restarting) is waited for, at most
  :data:`NODE_TTL_S`, and then taken over, with the rooms still claimed under the id. A beat
  that finds another instance's token writes nothing: the process has lost its identity and
  fences itself at once (below). Claims, releases and deregistration by an instance that is not
  the registered one change nothing.
- **Placement.** ``room:<id>:node`` names the node of a room. :meth:`MediaPlacement.place`
  (asked by the join page, through ``POST /rooms/placement``, before it opens its WebSocket)
  returns the room's node if it is alive, else picks the live node with the lowest load
  (rooms placed on it ÷ capacity) and reserves the room there for :data:`RESERVATION_TTL_S`.
  ``media:node:<id>:rooms`` is the set of rooms placed on or hosted by a node: its size is the
  node's load, so two placements at the same moment do not both pick the emptiest node.
- **Claim.** A node hosts a room only after :meth:`MediaPlacement.claim` succeeds, which it
  does unless another *live* node holds the room, or the claiming node is not registered
  itself. The heartbeat (:meth:`heartbeat`) is one script: it re-registers the node (hash,
  token, TTL, set membership) and re-asserts the claims of every room the node hosts, in one
  atomic step; a claim it finds taken by another node is reported back as lost, and the caller
  stops hosting the room.
- **Fencing.** A node that cannot renew its registration (Redis unreachable, its event loop
  stalled) stops hosting all its rooms by itself after :data:`FENCE_AFTER_S`, before the
  others may take it for dead at :data:`NODE_TTL_S`: so a room is not hosted by two processes
  at once. A node whose beat finds its id held by another instance stops hosting them at once.
  Should it happen anyway (a stall longer than that, during which the loop cannot run the
  fence), the recording's part files are created exclusively: the two write different parts,
  never one file.
- **Failover.** A killed node's heartbeat stops; within :data:`NODE_TTL_S` its rooms count as
  vacant, the next join is placed on a live node, and that node resumes the room from its live
  state in Redis (see :mod:`mediation_rooms.live_room`). The page notices through its socket
  closing, or, when the host vanished without closing it (power, network), through its peer
  connection failing (ICE consent, some 15–30 s). The recordings directory must be storage
  every media process and worker shares (one host's disk, or a shared mount).
- **Redis losing its data** (a restart without persistence, a failover to an empty replica).
  Each node's next successful beat restores its registration and all its hosted rooms' claims
  at once. Until its host has beaten, a placement could find no claim on a hosted room and move
  it (the host would then hand it over). So a beat that expected its node's key (renewed less
  than :data:`FENCE_AFTER_S` ago) and finds it gone sets ``media:settling`` for
  :data:`SETTLE_S`, and meanwhile a room without a claim is not placed (:class:`NoMediaNode`;
  the page asks again): by its end every node still hosting rooms has beaten, or fenced itself
  (its last renewal was before the loss). The window that remains: from the loss until the
  first beat of a node registered before it (up to :data:`HEARTBEAT_S` after Redis answers
  again) no node is registered, so nothing is placed at all, unless a process *starting* then
  registers first: a room hosted elsewhere can then be placed on it and hosted twice, until its
  host's next beat (at most :data:`HEARTBEAT_S`; the two write separate recording parts). The
  costs: for :data:`SETTLE_S` after a loss (or after a running node's key was deleted by hand)
  a room without a claim waits to be placed even if nobody hosts it; reservations (placed, not
  yet joined) are lost, and their joins claim the room on the node the page was sent to.

The scripts run atomically in Redis. They read keys derived from their arguments (node keys),
which standalone Redis and Sentinel allow; a Redis Cluster deployment would need the keys of a
deployment in one hash slot (a ``{…}`` hash tag in ``JIEFEN_REDIS_PREFIX``).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from jiefen.errors import ConfigurationError, NoMediaNode
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
#: After Redis lost its data, rooms without a claim are not placed for this long: every node
#: still hosting rooms has re-asserted them by then, or fenced itself (FENCE_AFTER_S < this).
SETTLE_S = NODE_TTL_S

# Returns the room's node: its current one while that node is alive, else the live node with
# the lowest load, now reserved for the room; false when no node is alive; {'settling', ms}
# for a room without a claim while nodes re-assert theirs after Redis lost its data.
# KEYS: room key, nodes set, settling key. ARGV: key prefix, room id, reservation TTL.
_PLACE = """
local owner = redis.call('GET', KEYS[1])
if owner and redis.call('EXISTS', ARGV[1] .. 'media:node:' .. owner) == 1 then
  return owner
end
if not owner then
  local settling = redis.call('PTTL', KEYS[3])
  if settling > 0 then return {'settling', settling} end
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
# A node that is not registered (its key expired: it was taken for dead), or whose key another
# instance holds (ARGV[5], when not empty, is the claiming instance), claims nothing.
# KEYS: room key. ARGV: key prefix, room id, node id, claim TTL, instance.
_CLAIM = """
local node = ARGV[1] .. 'media:node:' .. ARGV[3]
if redis.call('EXISTS', node) == 0
    or (ARGV[5] ~= '' and redis.call('HGET', node, 'instance') ~= ARGV[5]) then
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

# One beat of node ARGV[2], instance ARGV[3], hosting the rooms ARGV[12..]: unless another
# instance's key holds the id ({'taken', its instance, its key's TTL in ms}: nothing written),
# registers the node (hash, TTL, set membership), renews or re-asserts the claims of its hosted
# rooms, forgets its reservations that lapsed, and returns {'ok', hosted rooms another node now
# holds...}. A renewal that expected the node's key (ARGV[10] = '1') and finds it gone means
# Redis lost its data: rooms without a claim then wait to be placed (the settling key).
# KEYS: node key, nodes set, the node's rooms set, settling key. ARGV: key prefix, node id,
# instance, url, capacity, hosting, started at, node TTL, claim TTL, expected, settle ms, rooms...
_BEAT = """
local holder = redis.call('HGET', KEYS[1], 'instance')
if holder and holder ~= ARGV[3] then
  return {'taken', holder, redis.call('PTTL', KEYS[1])}
end
if ARGV[10] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[4], ARGV[2], 'PX', tonumber(ARGV[11]), 'NX')
end
redis.call('HSET', KEYS[1], 'url', ARGV[4], 'capacity', ARGV[5], 'hosting', ARGV[6],
  'instance', ARGV[3], 'started_at', ARGV[7])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[8]))
redis.call('SADD', KEYS[2], ARGV[2])
local hosted, lost, reply = {}, {}, {'ok'}
for i = 12, #ARGV do
  local room = ARGV[i]
  hosted[room] = true
  local key = ARGV[1] .. 'room:' .. room .. ':node'
  local owner = redis.call('GET', key)
  if owner == false or owner == ARGV[2] then
    redis.call('SET', key, ARGV[2], 'EX', tonumber(ARGV[9]))
    redis.call('SADD', KEYS[3], room)
  else
    table.insert(lost, room)
    table.insert(reply, room)
  end
end
for _, room in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if not hosted[room] and redis.call('GET', ARGV[1] .. 'room:' .. room .. ':node') ~= ARGV[2] then
    redis.call('SREM', KEYS[3], room)
  end
end
for _, room in ipairs(lost) do redis.call('SREM', KEYS[3], room) end
return reply
"""

# Gives the room up if node ARGV[2] holds it, unless another instance's key holds the node id
# (ARGV[3], when not empty, is the releasing instance).
# KEYS: room key, the node's rooms set, node key. ARGV: room id, node id, instance.
_RELEASE = """
local holder = redis.call('HGET', KEYS[3], 'instance')
if ARGV[3] ~= '' and holder and holder ~= ARGV[3] then return 0 end
if redis.call('GET', KEYS[1]) == ARGV[2] then redis.call('DEL', KEYS[1]) end
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""

# Removes node ARGV[2] and gives up the claims it holds of the rooms ARGV[4..], unless another
# instance's key holds the node id (ARGV[3], when not empty, is the leaving instance).
# KEYS: node key, the node's rooms set, nodes set. ARGV: key prefix, node id, instance, rooms...
_DEREGISTER = """
local holder = redis.call('HGET', KEYS[1], 'instance')
if ARGV[3] ~= '' and holder and holder ~= ARGV[3] then return 0 end
for i = 4, #ARGV do
  local key = ARGV[1] .. 'room:' .. ARGV[i] .. ':node'
  if redis.call('GET', key) == ARGV[2] then redis.call('DEL', key) end
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[2])
return 1
"""


class NodeIdInUse(ConfigurationError):
    """Another running process is registered under this media node id: at start-up, this one
    must not serve; later, this one lost its identity and stops hosting rooms."""

    def __init__(self, node_id: str, *, holder: str, remaining_s: float) -> None:
        super().__init__(
            f"media node id {node_id!r} is registered by another running process "
            f"(instance {holder})"
        )
        self.node_id = node_id
        #: The instance token of the process holding the id.
        self.holder = holder
        #: How long that registration lasts unless renewed (seconds; negative: no expiry).
        self.remaining_s = remaining_s


@dataclass(frozen=True, slots=True)
class MediaNode:
    """One media process, as its peers and the join page see it."""

    node_id: str
    #: The signalling WebSocket URL browsers use for rooms on this node (``ws://…/rooms/ws``,
    #: or ``/rooms/ws`` on the join page's own origin).
    signalling_url: str
    #: How many rooms this node should take before others are preferred.
    capacity: int
    #: Which process start this is: random per :class:`MediaNode` made (one per process start),
    #: so that two processes under one ``node_id`` tell each other apart.
    instance: str = field(default_factory=lambda: secrets.token_hex(8))


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
    """The Redis-side agreement on rooms and media nodes (see the module docstring).

    One per process: the nodes it registers are this process's, and its claims, releases and
    deregistrations for them are made as their instance (for a node id it did not register,
    as any instance).
    """

    def __init__(self, redis: aioredis.Redis, *, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._place = LuaScript(redis, _PLACE)
        self._claim = LuaScript(redis, _CLAIM)
        self._beat = LuaScript(redis, _BEAT)
        self._release = LuaScript(redis, _RELEASE)
        self._deregister = LuaScript(redis, _DEREGISTER)
        #: node id -> (instance, started at) of the nodes this process registered.
        self._registered: dict[str, tuple[str, float]] = {}

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

    @property
    def settling_key(self) -> str:
        """Present for a while after Redis lost its data (see the module docstring)."""
        return f"{self.prefix}media:settling"

    # -- the web side -------------------------------------------------------------------------

    async def place(self, room_id: str) -> MediaNode:
        """The live node that hosts ``room_id`` or is now reserved for it; raises NoMediaNode."""
        node_id = await self._place(
            keys=[self.room_key(room_id), self.nodes_key, self.settling_key],
            args=[self.prefix, room_id, RESERVATION_TTL_S],
        )
        if isinstance(node_id, list):
            raise NoMediaNode(
                f"media nodes are re-asserting their rooms after Redis lost its data "
                f"({int(node_id[1]) / 1000:.1f} s to go)"
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
        """Announce ``node`` as alive for the next :data:`NODE_TTL_S` seconds; raises
        :class:`NodeIdInUse`, writing nothing, while another instance's key holds its id."""
        await self._run_beat(node, [], hosting=hosting, expected=False)

    async def claim(self, room_id: str, node_id: str) -> str | None:
        """Make ``node_id`` the room's host; returns the other live node holding it, if any
        (``unregistered:<node_id>`` when ``node_id`` itself is not registered as alive, or is
        registered by another instance than the one this process registered)."""
        owner = await self._claim(
            keys=[self.room_key(room_id)],
            args=[self.prefix, room_id, node_id, CLAIM_TTL_S, self._instance_of(node_id)],
        )
        return as_text(owner) if owner else None

    async def heartbeat(
        self, node: MediaNode, hosted: Iterable[str], *, expected: bool = False
    ) -> list[str]:
        """Re-register the node and renew (or, after Redis lost its data, re-assert) its hosted
        rooms' claims, in one atomic step; returns the rooms another node took. ``expected``:
        the node's key should still be there (renewed less than :data:`FENCE_AFTER_S` ago), so
        finding it gone means Redis lost its data. Raises :class:`NodeIdInUse`, writing
        nothing, when another instance's key holds the id: this process lost its identity."""
        rooms = list(hosted)
        return await self._run_beat(node, rooms, hosting=len(rooms), expected=expected)

    async def _run_beat(
        self, node: MediaNode, rooms: list[str], *, hosting: int, expected: bool
    ) -> list[str]:
        known = self._registered.get(node.node_id)
        if known is None or known[0] != node.instance:
            known = self._registered[node.node_id] = (node.instance, time.time())
        reply = await self._beat(
            keys=[
                self.node_key(node.node_id),
                self.nodes_key,
                self.rooms_key(node.node_id),
                self.settling_key,
            ],
            args=[
                self.prefix,
                node.node_id,
                node.instance,
                node.signalling_url,
                node.capacity,
                hosting,
                known[1],
                NODE_TTL_S,
                CLAIM_TTL_S,
                "1" if expected else "0",
                SETTLE_S * 1000,
                *rooms,
            ],
        )
        if as_text(reply[0]) == "taken":
            raise NodeIdInUse(
                node.node_id, holder=as_text(reply[1]), remaining_s=int(reply[2]) / 1000
            )
        return [as_text(room) for room in reply[1:]]

    def _instance_of(self, node_id: str) -> str:
        known = self._registered.get(node_id)
        return "" if known is None else known[0]

    async def release(self, room_id: str, node_id: str) -> None:
        """``node_id`` no longer hosts ``room_id`` (ended, or empty for a while); nothing
        happens while another instance than the one this process registered holds the id."""
        await self._release(
            keys=[self.room_key(room_id), self.rooms_key(node_id), self.node_key(node_id)],
            args=[room_id, node_id, self._instance_of(node_id)],
        )

    async def deregister(self, node_id: str, hosted: Iterable[str]) -> None:
        """A clean shutdown: the node's rooms become vacant at once, not after the TTL (none
        of it while another instance than the one this process registered holds the id)."""
        await self._deregister(
            keys=[self.node_key(node_id), self.rooms_key(node_id), self.nodes_key],
            args=[self.prefix, node_id, self._instance_of(node_id), *hosted],
        )


def _node_from(node_id: str, info: dict[str, str]) -> MediaNode:
    return MediaNode(
        node_id=node_id,
        signalling_url=info["url"],
        capacity=int(info["capacity"]),
        instance=info.get("instance", ""),
    )
