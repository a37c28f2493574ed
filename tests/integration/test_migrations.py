"""migrate() against a real PostgreSQL, each test on a database of its own: numbered
migrations once each, then the live SQL files, each applied again whenever it changes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import datetime

import asyncpg
import pytest

from server.storage import migrations
from server.storage.migrations import UndeclaredFunctions, live_files, migrate, migration_files
from tests.conftest import SHARDS
from tests.support import connected

NUMBERED = [name for _, name, _ in migration_files()]
LIVE = [name for name, _ in live_files()]
ALL_MIGRATIONS = NUMBERED + LIVE
# Functions migrations 001-005 created and later dropped.
RETIRED = [
    "reserve_batch",
    "finish_batch",
    "adjust_stock",
    "end_holds",
    "lock_stock",
    "level_of",
    "next_events",
]


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
    async with connected(scratch_dsn) as other:
        assert await asyncio.wait_for(migrate(other, 4), 10) == []


async def test_concurrent_migrators_apply_each_migration_once(scratch_dsn: str) -> None:
    conns = [await asyncpg.connect(scratch_dsn) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(migrate(c, 4) for c in conns))
        found = await conns[0].fetch("SELECT name FROM stockcore.schema_migrations")
    finally:
        for c in conns:
            await c.close()

    assert sorted(name for names in applied for name in names) == ALL_MIGRATIONS
    assert sorted(r["name"] for r in found) == NUMBERED


async def test_migrating_the_test_database_again_changes_nothing(migrated: str) -> None:
    async with connected(migrated) as conn:
        before = await schema(conn)

        assert await migrate(conn, SHARDS) == []
        with pytest.raises(asyncpg.InvalidParameterValueError):
            await migrate(conn, SHARDS + 1)

        assert await schema(conn) == before


# --- the live SQL -----------------------------------------------------------------

_FUNCTION = re.compile(
    r"^CREATE OR REPLACE FUNCTION stockcore\.(\w+)\((.*?)\bAS \$\$(.*?)\$\$", re.M | re.S
)
_SETTING = re.compile(r"\bSET (\w+) = (\w+)")
_TRIGGER = re.compile(r"^CREATE OR REPLACE TRIGGER (\w+)", re.M)


def defined() -> list[tuple[str, list[str], str]]:
    """Each function definition in the live files: name, settings, body."""
    return [
        (name, [f"{k}={v}" for k, v in _SETTING.findall(head)], body)
        for _, sql in live_files()
        for name, head, body in _FUNCTION.findall(sql)
    ]


def edited(name: str, edit: Callable[[str], str]) -> Callable[[], list[tuple[str, str]]]:
    """live_files() with the file `name` edited."""
    files = [(n, edit(sql) if n == name else sql) for n, sql in live_files()]
    assert files != live_files()
    return lambda: files


def without_published_upto(sql: str) -> str:
    """outbox.sql without its definition of published_upto()."""
    return re.sub(
        r"CREATE OR REPLACE FUNCTION stockcore\.published_upto\(\).*?\$\$;\n", "", sql, flags=re.S
    )


async def live_sql(conn: asyncpg.Connection) -> dict[str, tuple[str, datetime]]:
    """Each live file's recorded checksum and when it was applied."""
    rows = await conn.fetch("SELECT name, checksum, applied_at FROM stockcore.schema_live_sql")
    return {r["name"]: (r["checksum"], r["applied_at"]) for r in rows}


async def test_a_fresh_database_holds_each_live_function_once_as_its_file_defines_it(
    conn: asyncpg.Connection,
) -> None:
    await migrate(conn, 4)

    rows = await conn.fetch(
        "SELECT proname, coalesce(proconfig, '{}') AS settings, prosrc FROM pg_proc"
        " WHERE pronamespace = 'stockcore'::regnamespace"
    )
    definitions = sorted(defined())
    assert [name for name, _, _ in definitions] == sorted({name for name, _, _ in definitions})
    assert sorted((r["proname"], r["settings"], r["prosrc"]) for r in rows) == definitions
    triggers = await conn.fetch(
        "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"
        " AND tgrelid::regclass::text LIKE 'stockcore.%'"
    )
    assert sorted(r["tgname"] for r in triggers) == sorted(
        name for _, sql in live_files() for name in _TRIGGER.findall(sql)
    )


async def test_functions_the_numbered_migrations_dropped_stay_dropped(
    conn: asyncpg.Connection,
) -> None:
    await migrate(conn, 4)

    found = await conn.fetch(
        "SELECT proname FROM pg_proc WHERE pronamespace = 'stockcore'::regnamespace"
        " AND proname = ANY($1::text[])",
        RETIRED,
    )
    assert found == []
    assert not {name for name, _, _ in defined()} & set(RETIRED)


async def test_a_changed_live_file_is_applied_again_and_the_others_are_not(
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrate(conn, 4)
    before = await live_sql(conn)
    function = await conn.fetchval("SELECT 'stockcore.published_upto()'::regprocedure::oid")
    monkeypatch.setattr(
        migrations,
        "live_files",
        edited(
            "live/outbox.sql",
            lambda sql: sql.replace("SELECT published_upto FROM", "SELECT published_upto + 0 FROM"),
        ),
    )

    applied = await migrate(conn, 4)
    again = await migrate(conn, 4)

    assert (applied, again) == (["live/outbox.sql"], [])
    after = await live_sql(conn)
    assert {n: v for n, v in after.items() if n != "live/outbox.sql"} == {
        n: v for n, v in before.items() if n != "live/outbox.sql"
    }
    assert after["live/outbox.sql"][0] != before["live/outbox.sql"][0]
    assert after["live/outbox.sql"][1] > before["live/outbox.sql"][1]
    # Replaced in place: the same function, with the new body.
    assert (
        await conn.fetchval("SELECT prosrc FROM pg_proc WHERE oid = $1", function)
        == "\n    SELECT published_upto + 0 FROM stockcore.outbox_state\n"
    )
    assert await conn.fetchval("SELECT stockcore.published_upto()") == 0


async def test_a_function_taken_out_of_a_live_file_is_refused_until_it_is_dropped(
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrate(conn, 4)
    before = await live_sql(conn)

    monkeypatch.setattr(migrations, "live_files", edited("live/outbox.sql", without_published_upto))
    with pytest.raises(UndeclaredFunctions, match=r"published_upto\(\) \(in no live file\)"):
        await migrate(conn, 4)
    assert await live_sql(conn) == before

    monkeypatch.setattr(
        migrations,
        "live_files",
        edited(
            "live/outbox.sql",
            lambda sql: (
                without_published_upto(sql)
                + "\nDROP FUNCTION IF EXISTS stockcore.published_upto();\n"
            ),
        ),
    )
    assert await migrate(conn, 4) == ["live/outbox.sql"]
    assert await conn.fetchval("SELECT to_regprocedure('stockcore.published_upto()')") is None


async def test_a_function_whose_arguments_change_must_drop_its_old_form(
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrate(conn, 4)
    before = await live_sql(conn)

    def new_arguments(sql: str) -> str:
        return sql.replace(
            "stockcore.published_upto() RETURNS bigint",
            "stockcore.published_upto(p_at_least bigint) RETURNS bigint",
        )

    monkeypatch.setattr(migrations, "live_files", edited("live/outbox.sql", new_arguments))
    with pytest.raises(UndeclaredFunctions, match=r"published_upto\(\), .*\(overloaded\)"):
        await migrate(conn, 4)
    assert await live_sql(conn) == before

    monkeypatch.setattr(
        migrations,
        "live_files",
        edited(
            "live/outbox.sql",
            lambda sql: new_arguments(sql).replace(
                "CREATE OR REPLACE FUNCTION stockcore.published_upto(",
                "DROP FUNCTION IF EXISTS stockcore.published_upto();\n"
                "CREATE OR REPLACE FUNCTION stockcore.published_upto(",
            ),
        ),
    )
    assert await migrate(conn, 4) == ["live/outbox.sql"]
    # Applied again, the drop finds the old form gone and drops nothing it should not.
    assert await migrate(conn, 4) == []
    assert await conn.fetchval(
        "SELECT array_agg(oid::regprocedure::text) FROM pg_proc WHERE proname = 'published_upto'"
    ) == ["stockcore.published_upto(bigint)"]


async def test_after_a_new_numbered_migration_every_live_file_is_applied_again(
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrate(conn, 4)
    numbered = migration_files()
    # A table change that must first drop a function depending on what it changes.
    dropping = "DROP FUNCTION stockcore.claim_fulfilments(text, int, float8);"
    monkeypatch.setattr(
        migrations, "migration_files", lambda: [*numbered, (999, "999_change.sql", dropping)]
    )

    applied = await migrate(conn, 4)

    assert applied == ["999_change.sql", *LIVE]
    assert (
        await conn.fetchval(
            "SELECT to_regprocedure('stockcore.claim_fulfilments(text, int, float8)')"
        )
        is not None
    )
    assert await migrate(conn, 4) == []


async def test_concurrent_migrators_apply_a_changed_live_file_once(
    scratch_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conns = [await asyncpg.connect(scratch_dsn) for _ in range(2)]
    try:
        await migrate(conns[0], 4)
        monkeypatch.setattr(
            migrations, "live_files", edited("live/outbox.sql", lambda sql: sql + "\n-- edited\n")
        )
        applied = await asyncio.gather(*(migrate(c, 4) for c in conns))
    finally:
        for c in conns:
            await c.close()

    assert sorted(name for names in applied for name in names) == ["live/outbox.sql"]
