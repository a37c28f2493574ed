"""Waiting on a condition rather than for a guessed time: a loaded 2-core machine makes
any fixed sleep too short some day."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from tests.support import connected


async def eventually(
    condition: Callable[[], Awaitable[bool]], timeout: float = 10.0, interval: float = 0.05
) -> bool:
    """Whether `condition` holds within `timeout` seconds (polled every `interval`)."""
    deadline = time.monotonic() + timeout
    while True:
        if await condition():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


async def until_true(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """`until` for a condition that needs no await (a list another task fills, a process
    table)."""

    async def holds() -> bool:
        return condition()

    await until(holds, what, timeout)


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0) -> None:
    """Wait for `condition`; fail the test naming `what` if it does not come in `timeout`."""
    assert await eventually(condition, timeout), f"not within {timeout} s: {what}"


async def sql_is(dsn: str, query: str, expected: object, *args: object) -> bool:
    """Whether `query`'s single value equals `expected` now (a fresh connection each time,
    so the condition can be polled across a server restart)."""
    async with connected(dsn) as conn:
        return bool(await conn.fetchval(query, *args) == expected)


async def no_short_holds_left(dsn: str, longest_short_ttl_s: float, timeout: float) -> None:
    """Wait until every hold with a TTL of at most `longest_short_ttl_s` has ended (expired
    and swept, committed or released)."""
    await until(
        lambda: sql_is(
            dsn,
            "SELECT count(*) FROM stockcore.reservations"
            " WHERE status = 1 AND expires_at - created_at <= $1 * interval '1 second'",
            0,
            longest_short_ttl_s,
        ),
        f"every hold of at most {longest_short_ttl_s} s ended",
        timeout,
    )


async def database_clock_offset(dsn: str) -> float:
    """PostgreSQL's clock minus ours, in seconds (PostgreSQL's clock decides expiry)."""
    async with connected(dsn) as conn:
        before = time.time()
        theirs = (await conn.fetchval("SELECT clock_timestamp()")).timestamp()
        after = time.time()
    return float(theirs - (before + after) / 2)
