"""Apply the SQL migrations in server/storage/sql, in order, once each."""

from __future__ import annotations

import logging
from importlib import resources

import asyncpg

from server.domain.orders import TRANSITIONS

log = logging.getLogger(__name__)

# Any fixed number: migrators in several processes take this lock in turn.
_LOCK_KEY = 0x57C0C0DE


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration, by version."""
    folder = resources.files("server.storage") / "sql"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text()))
    return sorted(found)


async def migrate(conn: asyncpg.Connection, shard_count: int) -> list[str]:
    """Apply pending migrations and make sure `shard_count` stock shards exist."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            "CREATE SCHEMA IF NOT EXISTS stockcore;"
            "CREATE TABLE IF NOT EXISTS stockcore.schema_migrations ("
            " version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            row["version"]
            for row in await conn.fetch("SELECT version FROM stockcore.schema_migrations")
        }
        for version, name, sql in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO stockcore.schema_migrations (version, name) VALUES ($1, $2)",
                    version,
                    name,
                )
            applied.append(name)
            log.info("migration applied", extra={"migration": name})
        await conn.execute("SELECT stockcore.ensure_stock_shards($1)", shard_count)
        await sync_transitions(conn)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied


async def sync_transitions(conn: asyncpg.Connection) -> None:
    """Copy the status machine (server.domain.orders.TRANSITIONS, the one written by
    hand) into stockcore.order_transitions, which the order functions decide by."""
    rows = [
        (int(source), int(target), int(event))
        for source, targets in TRANSITIONS.items()
        for target, event in targets.items()
    ]
    async with conn.transaction():
        await conn.execute("DELETE FROM stockcore.order_transitions")
        await conn.executemany(
            "INSERT INTO stockcore.order_transitions (from_status, to_status, event_type)"
            " VALUES ($1, $2, $3)",
            rows,
        )
