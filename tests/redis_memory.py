"""A Redis at its memory limit, as the project runs it (maxmemory, no eviction): writes
are refused with OOM, reads, deletions and trims still work."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis


@asynccontextmanager
async def redis_configured(
    redis_client: aioredis.Redis, **config: str | int
) -> AsyncIterator[None]:
    """Redis with these CONFIG values (names with "_" for "-") for the block, its own after."""
    names = [name.replace("_", "-") for name in config]
    saved = {name: (await redis_client.config_get(name))[name] for name in names}
    try:
        for name, value in zip(names, config.values(), strict=True):
            await redis_client.config_set(name, value)
        yield
    finally:
        for name, old in saved.items():
            await redis_client.config_set(name, str(old))


@asynccontextmanager
async def writes_refused(
    redis_client: aioredis.Redis, *, until_freed: int | None = None
) -> AsyncIterator[None]:
    """Redis at its memory limit with no eviction for the block: every write is refused
    with OOM, or, with `until_freed`, every write until that many bytes are freed."""
    limit = 1
    if until_freed is not None:
        used = int((await redis_client.info("memory"))["used_memory"])
        limit = max(used - until_freed, 1)
    async with redis_configured(redis_client, maxmemory_policy="noeviction", maxmemory=limit):
        yield
