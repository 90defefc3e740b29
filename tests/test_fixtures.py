from __future__ import annotations

import redis.asyncio as aioredis
import sqlalchemy
from sqlalchemy.ext.asyncio import create_async_engine


async def test_redis_prefix_isolated(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    await redis_client.set(f"{redis_prefix}probe", "1")
    assert await redis_client.get(f"{redis_prefix}probe") == b"1"


async def test_database_is_empty_and_writable(database_url: str) -> None:
    engine = create_async_engine(database_url)
    async with engine.begin() as connection:
        await connection.execute(sqlalchemy.text("CREATE TABLE probe (id INTEGER PRIMARY KEY)"))
        await connection.execute(sqlalchemy.text("INSERT INTO probe (id) VALUES (1)"))
        count = (await connection.execute(sqlalchemy.text("SELECT count(*) FROM probe"))).scalar()
    await engine.dispose()
    assert count == 1
