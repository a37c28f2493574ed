"""Shared fixtures: real PostgreSQL and Redis, started once per test process by the
project's own scripts (server.devservers), or existing servers named by
STOCKCORE_PG_DSN and STOCKCORE_REDIS_URL. Tests reset the `stockcore` schema and
the Redis keys under the gate's prefix, so point those variables at scratch servers."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from server.config import Settings
from server.devservers import LocalPostgres, LocalRedis, free_port
from server.storage.migrations import migrate

ROOT = Path(__file__).resolve().parent.parent
SHARDS = 8


@dataclass
class Servers:
    """Where the test servers are, and handles to kill them when we own them."""

    pg_dsn: str
    redis_url: str
    pg: LocalPostgres | None
    redis: LocalRedis | None


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    """PostgreSQL and Redis for the whole session."""
    pg_dsn = os.environ.get("STOCKCORE_PG_DSN")
    redis_url = os.environ.get("STOCKCORE_REDIS_URL")
    base = ROOT / ".data" / f"test-{os.getpid()}"
    # Free ports, not ones derived from the pid: another suite on the machine may hold those.
    pg = None if pg_dsn else LocalPostgres(base / "pg", free_port())
    rd = None if redis_url else LocalRedis(base / "redis", free_port())
    try:
        if pg is not None:
            pg.start()
        if rd is not None:
            rd.start()
        yield Servers(pg_dsn or pg.dsn, redis_url or rd.url, pg, rd)  # type: ignore[union-attr]
    finally:
        if rd is not None:
            rd.stop()
        if pg is not None:
            pg.stop()
        if pg is not None or rd is not None:
            import shutil

            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
async def migrated(servers: Servers) -> str:
    """The database DSN, with a fresh stockcore schema."""
    conn = await asyncpg.connect(servers.pg_dsn)
    try:
        await conn.execute("DROP SCHEMA IF EXISTS stockcore CASCADE")
        await migrate(conn, SHARDS)
    finally:
        await conn.close()
    return servers.pg_dsn


async def reset_state(pg_dsn: str, redis_url: str) -> None:
    """Empty every table and the gate's Redis keys."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(
            "TRUNCATE stockcore.stock, stockcore.reservations, stockcore.movements,"
            " stockcore.adjustments, stockcore.orders, stockcore.order_history,"
            " stockcore.payments, stockcore.order_events, stockcore.fulfilments,"
            " stockcore.fulfilment_history, stockcore.fulfilment_dead_letters,"
            " stockcore.fulfilment_workers, stockcore.fulfilment_breaker_transitions"
        )
        await conn.execute("UPDATE stockcore.outbox_state SET published_upto = 0")
    finally:
        await conn.close()
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


@pytest.fixture
async def clean(servers: Servers, migrated: str) -> AsyncIterator[Servers]:
    """Servers with empty tables and an empty Redis."""
    await reset_state(migrated, servers.redis_url)
    yield servers


@pytest.fixture
def settings(clean: Servers) -> Settings:
    """Settings for an in-process server on a free loopback port."""
    return Settings(
        pg_dsn=clean.pg_dsn,
        redis_url=clean.redis_url,
        grpc_port=0,
        metrics_port=0,
        shard_count=SHARDS,
        log_json=False,
        expiry_interval_s=0.1,
        redis_probe_interval_s=0.1,
        # Tests of behaviour send hundreds of calls at once; the bound on calls in flight
        # is tested on its own (tests/e2e/test_overload.py).
        max_in_flight=10_000,
    ).validate()
