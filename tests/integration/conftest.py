"""Storage adapters over the real servers, opened on empty state and closed after each test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from server.storage.postgres import StockStore
from server.storage.redis_gate import AdmissionGate
from tests.conftest import SHARDS, Servers
from tests.support import connected


@pytest.fixture
async def store(clean: Servers) -> AsyncIterator[StockStore]:
    """A StockStore on the empty test database."""
    opened = await StockStore.connect(clean.pg_dsn, shard_count=SHARDS, pool_size=4, timeout=5)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def db(clean: Servers) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection, for raw SQL that goes around the store."""
    async with connected(clean.pg_dsn) as conn:
        yield conn


@pytest.fixture
async def gate(clean: Servers) -> AsyncIterator[AdmissionGate]:
    """An AdmissionGate on the empty test Redis."""
    opened = AdmissionGate.from_url(clean.redis_url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def redis_client(clean: Servers) -> AsyncIterator[aioredis.Redis]:
    """A plain Redis client, for commands that go around the gate."""
    client = aioredis.Redis.from_url(clean.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def scratch_dsn(servers: Servers) -> AsyncIterator[str]:
    """The DSN of a new, empty database, dropped after the test."""
    name = f"stockcore_migrations_{os.getpid()}"
    admin = await asyncpg.connect(servers.pg_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield urlsplit(servers.pg_dsn)._replace(path=f"/{name}").geturl()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def conn(scratch_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the scratch database."""
    async with connected(scratch_dsn) as opened:
        yield opened
