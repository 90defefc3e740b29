"""How Jiefen gets its Redis client: the real server when configured, else an in-process stand-in.

The stand-in (fakeredis, with Lua) serves ``jiefen serve`` on embedded defaults, where only one
process runs. Anything a second process needs must be in a real Redis: a multi-process deployment
sets ``JIEFEN_REDIS_URL``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from config.settings import Settings

log = logging.getLogger(__name__)


def connect_redis(settings: Settings) -> aioredis.Redis:
    """Return a client for ``settings.redis_url``, or an in-process stand-in when it is unset.

    The real client is built without a per-call socket timeout: callers bound their Redis work
    with one ``asyncio.timeout`` (cheaper than redis-py's per-socket timeouts on every call).
    """
    if settings.redis_url:
        return aioredis.from_url(settings.redis_url, socket_connect_timeout=5.0)
    import fakeredis  # imported lazily: production never needs it

    log.warning("JIEFEN_REDIS_URL is unset: using an in-process Redis stand-in (one process only)")
    return fakeredis.FakeAsyncRedis()


class LuaScript:
    """A Lua script run by its SHA-1 (``EVALSHA``), loaded on first use or after a flush.

    Leaner than redis-py's ``register_script`` wrapper, whose per-call layers (argument
    deprecation checks, a registered-client lookup) showed up as ~5 % of a webhook message's
    CPU; the scripts are on every message's path.
    """

    def __init__(self, redis: aioredis.Redis, source: str) -> None:
        self._redis = redis
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, *, keys: Sequence[str], args: Sequence[object]) -> Any:
        try:
            return await self._redis.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", self._sha, len(keys), *keys, *args
            )
        except NoScriptError:
            await self._redis.script_load(self._source)
            return await self._redis.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", self._sha, len(keys), *keys, *args
            )


def as_text(value: bytes | str) -> str:
    """A Redis reply as text (clients may be set to decode responses or not)."""
    return value.decode() if isinstance(value, bytes) else value


def as_bytes(value: bytes | str) -> bytes:
    """A Redis reply as bytes."""
    return value.encode() if isinstance(value, str) else value
