"""How Jiefen gets its Redis client: the real server when configured, else an in-process stand-in.

The stand-in (fakeredis, with Lua) serves ``jiefen serve`` on embedded defaults, where only one
process runs. Anything a second process needs must be in a real Redis: a multi-process deployment
sets ``JIEFEN_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import weakref
from collections.abc import Sequence
from typing import Any, ClassVar

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError
from redis.typing import EncodableT

from config.settings import Settings

log = logging.getLogger(__name__)

#: The longest one Redis command may take, sending and reading its reply (seconds).
REDIS_COMMAND_TIMEOUT_S = 5.0


def connect_redis(settings: Settings) -> aioredis.Redis:
    """Return a client for ``settings.redis_url``, or an in-process stand-in when it is unset.

    Every command of the real client is bounded by ``REDIS_COMMAND_TIMEOUT_S`` (redis-py's
    socket timeout; given explicitly, as redis-py's default changed between versions), so a
    Redis that stops answering fails the call instead of hanging it.
    """
    if settings.redis_url:
        return aioredis.from_url(
            settings.redis_url,
            socket_connect_timeout=REDIS_COMMAND_TIMEOUT_S,
            socket_timeout=REDIS_COMMAND_TIMEOUT_S,
        )
    import fakeredis  # imported lazily: production never needs it

    log.warning("JIEFEN_REDIS_URL is unset: using an in-process Redis stand-in (one process only)")
    return fakeredis.FakeAsyncRedis()


class LuaScript:
    """A Lua script run by its SHA-1 (``EVALSHA``), loaded on first use or after a flush.

    It runs on its client's :class:`ScriptLane`: the scripts are on every webhook message's
    path, and redis-py's own per-call layers (``register_script``'s argument checks, then
    ``execute_command``'s pool lock, liveness probe, retry wrapper and metrics hooks) cost more
    than the script itself.
    """

    def __init__(self, redis: aioredis.Redis, source: str) -> None:
        self._lane = ScriptLane.of(redis)
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, *, keys: Sequence[str], args: Sequence[EncodableT]) -> Any:
        command: tuple[EncodableT, ...] = ("EVALSHA", self._sha, len(keys), *keys, *args)
        try:
            return await self._lane.execute(command)
        except NoScriptError:
            await self._lane.execute(("SCRIPT", "LOAD", self._source))
            return await self._lane.execute(command)


class ScriptLane:
    """Connections of a client's pool kept for scripts, and used directly: send, then read.

    A connection is taken from the pool once and kept (never released to it), so closing the
    client closes these too (``aclose`` disconnects the connections in use). What this skips
    of redis-py's per-call path is safe because of one rule: a connection goes back to the idle
    list only after its whole reply was read (an error reply included). A command cut short,
    by a timeout cancelling it or a broken socket, disconnects its connection first, so a late
    reply can never be read by the next caller as its own; the next use reconnects.
    """

    _lanes: ClassVar[weakref.WeakKeyDictionary[aioredis.Redis, ScriptLane]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, pool: aioredis.ConnectionPool) -> None:
        self._pool = pool
        self._idle: list[AbstractConnection] = []
        #: The bound on one command, send and reply: the client's socket timeout, applied as
        #: one timer (redis-py applies it as a task for the send, then a timer for the read).
        self._timeout_s: float | None = None

    @classmethod
    def of(cls, redis: aioredis.Redis) -> ScriptLane:
        """The lane of ``redis`` (one per client, shared by all its scripts)."""
        lane = cls._lanes.get(redis)
        if lane is None:
            lane = cls._lanes[redis] = cls(redis.connection_pool)
        return lane

    async def execute(self, command: Sequence[EncodableT]) -> Any:
        """Run one command and return its reply; an error reply is raised as redis-py does."""
        connection = self._idle.pop() if self._idle else await self._new_connection()
        try:
            async with asyncio.timeout(self._timeout_s):
                await connection.send_packed_command(
                    connection.pack_command(*command), check_health=False
                )
                reply = await connection.read_response()
        except ResponseError:
            self._idle.append(connection)  # the whole (error) reply was read: still in step
            raise
        except BaseException:
            try:
                await connection.disconnect(nowait=True)
            finally:
                if not connection.is_connected:
                    self._idle.append(connection)
            raise
        self._idle.append(connection)
        return reply

    async def _new_connection(self) -> AbstractConnection:
        connection: AbstractConnection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        self._timeout_s = connection.socket_timeout
        connection.socket_timeout = None  # bounded by execute's own timer instead
        return connection


def as_text(value: bytes | str) -> str:
    """A Redis reply as text (clients may be set to decode responses or not)."""
    return value.decode() if isinstance(value, bytes) else value


def as_bytes(value: bytes | str) -> bytes:
    """A Redis reply as bytes."""
    return value.encode() if isinstance(value, str) else value
