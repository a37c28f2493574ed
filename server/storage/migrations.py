"""Bring a database to the current schema: the numbered migrations in
server/storage/sql (tables and data, each applied once, in order), then the live SQL in
server/storage/sql/live (functions and triggers, each file applied again whenever it
changes).

Migrations 001-012 were written before the live files and also create functions; they
are left as they were (an existing database must upgrade, and their order is history).
On a fresh database they still create those functions, in their old versions, and the
live files, applied right after, replace them. From 013 on, a numbered migration changes
tables and data only.
"""

from __future__ import annotations

import hashlib
import logging
import re
from importlib import resources

import asyncpg

from server.domain.orders import TRANSITIONS

log = logging.getLogger(__name__)

# Any fixed number: migrators in several processes take this lock in turn.
_LOCK_KEY = 0x57C0C0DE

# The live files name each function they define this way, so the migrator knows which
# functions the database should hold.
_DEFINED = re.compile(r"^CREATE OR REPLACE (?:FUNCTION|PROCEDURE) stockcore\.(\w+)\(", re.MULTILINE)


class UndeclaredFunctions(Exception):
    """The database's functions are not the live files': one no file defines, several of
    one name, or one a file defines missing."""


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every numbered migration, by version."""
    folder = resources.files("server.storage") / "sql"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text()))
    return sorted(found)


def live_files() -> list[tuple[str, str]]:
    """(name, sql) of every live SQL file, in the order they are applied: by name."""
    folder = resources.files("server.storage") / "sql" / "live"
    return sorted(
        (f"live/{entry.name}", entry.read_text())
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    )


def checksum(sql: str) -> str:
    """What a live file is recorded by: any change to its text applies it again."""
    return hashlib.sha256(sql.encode()).hexdigest()


def defined_functions(files: list[tuple[str, str]]) -> set[str]:
    """Names of the functions the live files define."""
    return {name for _, sql in files for name in _DEFINED.findall(sql)}


async def migrate(conn: asyncpg.Connection, shard_count: int) -> list[str]:
    """Apply pending numbered migrations and changed live files (returning their names),
    and make sure `shard_count` stock shards exist."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            "CREATE SCHEMA IF NOT EXISTS stockcore;"
            "CREATE TABLE IF NOT EXISTS stockcore.schema_migrations ("
            " version int PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now());"
            "CREATE TABLE IF NOT EXISTS stockcore.schema_live_sql ("
            " name text PRIMARY KEY, checksum text NOT NULL, applied_at timestamptz NOT NULL)"
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
        # A numbered migration may drop or change what a live file defines (to change a
        # type or table a function depends on): after one, every live file applies again.
        applied += await apply_live(conn, every_file=bool(applied))
        await conn.execute("SELECT stockcore.ensure_stock_shards($1)", shard_count)
        await sync_transitions(conn)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied


async def apply_live(conn: asyncpg.Connection, *, every_file: bool = False) -> list[str]:
    """Apply the live files whose text differs from the one last applied (or all of them),
    in one transaction with the check that the schema holds each function the live files
    define, once, and no other. Returns the names of the files applied. The caller holds
    the migrators' lock."""
    files = live_files()
    recorded = {
        row["name"]: row["checksum"]
        for row in await conn.fetch("SELECT name, checksum FROM stockcore.schema_live_sql")
    }
    changed = [
        (name, sql) for name, sql in files if every_file or recorded.get(name) != checksum(sql)
    ]
    if not changed:
        return []
    async with conn.transaction():
        for name, sql in changed:
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO stockcore.schema_live_sql (name, checksum, applied_at)"
                " VALUES ($1, $2, now())"
                " ON CONFLICT (name) DO UPDATE SET checksum = excluded.checksum,"
                " applied_at = excluded.applied_at",
                name,
                checksum(sql),
            )
        await _check_functions(conn, defined_functions(files))
    for name, _ in changed:
        log.info("live SQL applied", extra={"migration": name})
    return [name for name, _ in changed]


async def _check_functions(conn: asyncpg.Connection, defined: set[str]) -> None:
    # A function taken out of a live file stays in the database until something drops
    # it, and one whose arguments changed stays beside its successor as an overload that
    # calls may resolve to: either must be dropped explicitly (DROP FUNCTION IF EXISTS in
    # the live file, or a numbered migration).
    rows = await conn.fetch(
        "SELECT p.proname, count(*) AS versions,"
        " string_agg(p.oid::regprocedure::text, ', ' ORDER BY p.oid) AS signatures"
        " FROM pg_proc p WHERE p.pronamespace = 'stockcore'::regnamespace"
        " GROUP BY p.proname ORDER BY p.proname"
    )
    wrong = [
        f"{r['signatures']} ({'in no live file' if r['proname'] not in defined else 'overloaded'})"
        for r in rows
        if r["proname"] not in defined or r["versions"] > 1
    ]
    if wrong:
        raise UndeclaredFunctions(
            "drop these functions in a live file or a numbered migration: " + "; ".join(wrong)
        )
    missing = defined - {r["proname"] for r in rows}
    if missing:
        raise UndeclaredFunctions(
            "the live files define, but leave no function: " + ", ".join(sorted(missing))
        )


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
