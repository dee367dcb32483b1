from __future__ import annotations

import redis.asyncio as aioredis

from tests.support.servers import RedisServer


async def test_redis_server_fixture_serves_and_restarts(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await client.ping()
        await client.set("k", "v")
    finally:
        await client.aclose()
    redis_server.stop()
    redis_server.start()
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await client.get("k") is None  # no persistence configured: a restart loses data
    finally:
        await client.aclose()
