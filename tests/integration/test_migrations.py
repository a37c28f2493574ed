"""migrate() against a real PostgreSQL, each test on a database of its own."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import pytest

from server.storage.migrations import migrate, migration_files
from tests.conftest import SHARDS, Servers

ALL_MIGRATIONS = [name for _, name, _ in migration_files()]


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
    opened = await asyncpg.connect(scratch_dsn)
    try:
        yield opened
    finally:
        await opened.close()


async def schema(conn: asyncpg.Connection) -> dict[str, object]:
    """What migrations made: relations, functions, types, applied migrations, settings."""
    return {
        "relations": [
            tuple(r)
            for r in await conn.fetch(
                "SELECT c.relname, c.relkind, c.relfilenode FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'stockcore' ORDER BY c.relname"
            )
        ],
        "functions": [
            tuple(r)
            for r in await conn.fetch(
                "SELECT p.proname, p.oid FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                " WHERE n.nspname = 'stockcore' ORDER BY p.proname"
            )
        ],
        "migrations": [
            tuple(r)
            for r in await conn.fetch(
                "SELECT version, name, applied_at FROM stockcore.schema_migrations ORDER BY version"
            )
        ],
        "settings": [
            tuple(r)
            for r in await conn.fetch("SELECT key, value FROM stockcore.settings ORDER BY key")
        ],
    }


async def partitions(conn: asyncpg.Connection) -> list[str]:
    """Names of the stock table's partitions."""
    rows = await conn.fetch(
        "SELECT inhrelid::regclass::text AS name FROM pg_inherits"
        " WHERE inhparent = 'stockcore.stock'::regclass ORDER BY 1"
    )
    return [r["name"] for r in rows]


async def test_migrate_applies_every_migration_then_does_nothing_the_second_time(
    conn: asyncpg.Connection,
) -> None:
    first = await migrate(conn, 4)
    await conn.execute("INSERT INTO stockcore.stock (shard, sku, on_hand) VALUES (0, 'KEPT', 5)")
    before = await schema(conn)

    second = await migrate(conn, 4)

    assert first == ALL_MIGRATIONS
    assert second == []
    assert await schema(conn) == before
    assert await conn.fetchval("SELECT on_hand FROM stockcore.stock WHERE sku = 'KEPT'") == 5


async def test_migrate_creates_the_shards_asked_for(conn: asyncpg.Connection) -> None:
    await migrate(conn, 4)

    assert await partitions(conn) == [f"stockcore.stock_s{i:04}" for i in range(4)]
    assert (
        await conn.fetchval("SELECT value FROM stockcore.settings WHERE key = 'shard_count'") == "4"
    )


async def test_migrate_refuses_a_different_shard_count(
    conn: asyncpg.Connection, scratch_dsn: str
) -> None:
    await migrate(conn, 4)
    before = await schema(conn)

    with pytest.raises(asyncpg.InvalidParameterValueError, match="4 stock shards but 8"):
        await migrate(conn, 8)

    assert await schema(conn) == before
    assert await partitions(conn) == [f"stockcore.stock_s{i:04}" for i in range(4)]
    # The migrators' lock was given back: another migrator gets through at once.
    other = await asyncpg.connect(scratch_dsn)
    try:
        assert await asyncio.wait_for(migrate(other, 4), 10) == []
    finally:
        await other.close()


async def test_concurrent_migrators_apply_each_migration_once(scratch_dsn: str) -> None:
    conns = [await asyncpg.connect(scratch_dsn) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(migrate(c, 4) for c in conns))
        migrations = await conns[0].fetch("SELECT name FROM stockcore.schema_migrations")
    finally:
        for c in conns:
            await c.close()

    assert sorted(name for names in applied for name in names) == ALL_MIGRATIONS
    assert sorted(r["name"] for r in migrations) == ALL_MIGRATIONS


async def test_migrating_the_test_database_again_changes_nothing(migrated: str) -> None:
    conn = await asyncpg.connect(migrated)
    try:
        before = await schema(conn)

        assert await migrate(conn, SHARDS) == []
        with pytest.raises(asyncpg.InvalidParameterValueError):
            await migrate(conn, SHARDS + 1)

        assert await schema(conn) == before
    finally:
        await conn.close()
