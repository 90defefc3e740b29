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
from redis.exceptions import DataError, NoScriptError, ResponseError
from redis.typing import EncodableT

from config.settings import Settings

log = logging.getLogger(__name__)

#: The longest one Redis command may take, sending and reading its reply (seconds).
REDIS_COMMAND_TIMEOUT_S = 5.0
#: Connections one client may open (redis-py 8's default is 100; the script lane keeps up to 64).
REDIS_MAX_CONNECTIONS = 256


def connect_redis(settings: Settings) -> aioredis.Redis:
    """Return a client for ``settings.redis_url``, or an in-process stand-in when it is unset.

    Each read and write of the real client is bounded by ``REDIS_COMMAND_TIMEOUT_S`` (redis-py's
    socket timeout; given explicitly, as redis-py's default changed between versions), so a
    Redis that stops answering fails the call instead of hanging it (after redis-py's own
    retries; the scripts' :class:`ScriptLane` bounds each whole call, connecting included).
    """
    if settings.redis_url:
        return aioredis.from_url(
            settings.redis_url,
            socket_connect_timeout=REDIS_COMMAND_TIMEOUT_S,
            socket_timeout=REDIS_COMMAND_TIMEOUT_S,
            max_connections=REDIS_MAX_CONNECTIONS,
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

    Up to ``IDLE_CAP`` connections are kept between calls; one more is taken from the client's
    pool when all are busy, and given back to it after. Kept connections stay "in use" for the
    pool, so closing the client's pool (``aclose`` of a client that owns it) closes them too.

    What this skips of redis-py's per-call path is safe because of one rule: a connection is
    reused only after its whole reply was read (an error reply included). A command cut short,
    by the timer or a broken socket, disconnects its connection first, so a late reply can
    never be read by the next caller as its own; the next use reconnects. One the server closed
    while it sat idle (a restart, an idle timeout) is reconnected before it is used.
    """

    #: Connections kept between calls: above the scripts a busy webhook has in flight at once
    #: (a lower cap made connections churn through the pool's slow path at 32 senders), below
    #: the pool's limit (``REDIS_MAX_CONNECTIONS``), so a burst never starves other commands.
    IDLE_CAP = 64

    _lanes: ClassVar[weakref.WeakKeyDictionary[aioredis.Redis, ScriptLane]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, pool: aioredis.ConnectionPool) -> None:
        self._pool = pool
        self._idle: list[AbstractConnection] = []
        #: The bound on one call, connecting included: the client's socket timeout, applied as
        #: one timer (redis-py applies it as a task for the send, then a timer for the read).
        self._timeout_s: float | None = pool.connection_kwargs.get("socket_timeout")
        self._encoding: str = pool.connection_kwargs.get("encoding", "utf-8")
        self._encoding_errors: str = pool.connection_kwargs.get("encoding_errors", "strict")

    @classmethod
    def of(cls, redis: aioredis.Redis) -> ScriptLane:
        """The lane of ``redis`` (one per client, shared by all its scripts)."""
        lane = cls._lanes.get(redis)
        if lane is None:
            lane = cls._lanes[redis] = cls(redis.connection_pool)
        return lane

    async def execute(self, command: Sequence[EncodableT]) -> Any:
        """Run one command and return its reply; an error reply is raised as redis-py does."""
        async with asyncio.timeout(self._timeout_s):
            connection = await self._take()
            try:
                await connection.send_packed_command(
                    pack_command(command, self._encoding, self._encoding_errors), check_health=False
                )
                reply = await connection.read_response()
            except ResponseError:
                await self._give_back(connection)  # the whole (error) reply was read
                raise
            except BaseException:
                try:
                    await connection.disconnect(nowait=True)
                finally:
                    if not connection.is_connected:
                        self._idle.append(connection)  # reconnects on its next use
                raise
            await self._give_back(connection)
        return reply

    async def _take(self) -> AbstractConnection:
        if self._idle:
            idle = self._idle.pop()
            at_eof = getattr(getattr(idle, "_reader", None), "at_eof", None)
            if at_eof is not None and at_eof():
                await idle.disconnect(nowait=True)  # nothing sent yet: reconnect first
            return idle
        fresh: AbstractConnection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        fresh.socket_timeout = None  # bounded by execute's own timer instead
        return fresh

    async def _give_back(self, connection: AbstractConnection) -> None:
        if len(self._idle) < self.IDLE_CAP:
            self._idle.append(connection)
            return
        connection.socket_timeout = self._timeout_s
        await self._pool.release(connection)


def pack_command(
    command: Sequence[EncodableT], encoding: str = "utf-8", errors: str = "strict"
) -> bytes:
    """``command`` in Redis's wire format (an array of bulk strings), as one buffer.

    Encodes arguments as redis-py's ``Connection.pack_command`` does (text in ``encoding``,
    numbers by ``repr``, ``bool`` and other types refused with ``DataError``), at a third of its
    cost: the scripts' arguments are few and small, so none of its chunking is needed. Unlike
    redis-py, a command name of two words (``"SCRIPT LOAD"``) is not split: pass each word as
    its own argument.
    """
    parts = [b"*%d\r\n" % len(command)]
    data: bytes
    for argument in command:
        kind = type(argument)
        if kind is str:
            data = argument.encode(encoding, errors)  # type: ignore[union-attr]
        elif kind is bytes:
            data = argument  # type: ignore[assignment]
        elif kind is int or kind is float:
            data = repr(argument).encode()
        elif isinstance(argument, (bytes, bytearray, memoryview)):
            data = bytes(argument)
        elif isinstance(argument, str):
            data = argument.encode(encoding, errors)
        elif isinstance(argument, (int, float)) and not isinstance(argument, bool):
            data = repr(argument).encode()
        else:
            raise DataError(f"Invalid input of type: {type(argument).__name__!r}")
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


def as_text(value: bytes | str) -> str:
    """A Redis reply as text (clients may be set to decode responses or not)."""
    return value.decode() if isinstance(value, bytes) else value


def as_bytes(value: bytes | str) -> bytes:
    """A Redis reply as bytes."""
    return value.encode() if isinstance(value, str) else value
