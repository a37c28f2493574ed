"""What the tests assert about the whole database: stockcore.invariant_violations(), the
one invariant check (server/storage/sql/006_invariants.sql), also run after load tests."""

from __future__ import annotations

import asyncpg

_VIOLATIONS = 'SELECT "check", subject, detail FROM stockcore.invariant_violations()'


async def violations(conn: asyncpg.Connection) -> list[tuple[str, str, str]]:
    """Every (check, subject, detail) the function reports now; empty when all holds."""
    return [(r["check"], r["subject"], r["detail"]) for r in await conn.fetch(_VIOLATIONS)]


async def assert_invariants_hold(conn: asyncpg.Connection) -> None:
    """Fail the test with every violation found, one per line."""
    found = await violations(conn)
    assert found == [], "invariants violated:\n" + "\n".join(
        f"  {check} {subject}: {detail}" for check, subject, detail in found
    )
