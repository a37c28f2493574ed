"""What the tests assert about the whole database: stockcore.invariant_violations(), the
one invariant check (server/storage/sql/live/invariants.sql), also run after load tests."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import redis.asyncio as aioredis

from tests.support import connected

_VIOLATIONS = 'SELECT "check", subject, detail FROM stockcore.invariant_violations()'


async def violations(conn: asyncpg.Connection) -> list[tuple[str, str, str]]:
    """Every (check, subject, detail) the function reports now; empty when all holds."""
    return [(r["check"], r["subject"], r["detail"]) for r in await conn.fetch(_VIOLATIONS)]


async def assert_invariants_hold(conn: asyncpg.Connection) -> None:
    """Fail the test with every violation found, one per line, and with every currency in
    which the money ledger differs from the facts it records."""
    found = await violations(conn)
    assert found == [], "invariants violated:\n" + "\n".join(
        f"  {check} {subject}: {detail}" for check, subject, detail in found
    )
    off = await conn.fetch(
        "SELECT currency, imbalance_minor FROM stockcore.ledger_imbalance()"
        " WHERE imbalance_minor <> 0"
    )
    assert off == [], f"the ledger differs from its facts: {[tuple(r) for r in off]}"


async def assert_mirror_converges(pg_dsn: str, redis_url: str, timeout: float = 10.0) -> None:
    """The Redis mirror agrees with PostgreSQL on every SKU, not only the hot ones, within
    `timeout` (pending holds settle, dead requests' ones are dropped after the grace): a
    mirror short of what PostgreSQL holds would make the gate refuse what PostgreSQL
    accepts."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            async with connected(pg_dsn) as conn:
                rows = {
                    r["sku"]: (r["on_hand"], r["reserved"], 0)
                    for r in await conn.fetch("SELECT sku, on_hand, reserved FROM stockcore.stock")
                }
            mirrored = {}
            for sku in rows:
                values = await client.hmget(f"sc:s:{sku}", "oh", "rs", "pd")
                mirrored[sku] = tuple(int(v or 0) for v in values)
            if mirrored == rows:
                return
            assert time.monotonic() < deadline, f"Redis {mirrored} disagrees with PostgreSQL {rows}"
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()
