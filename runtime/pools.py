"""PostgreSQL pools of the programs beside the server (the fulfilment worker, the webhook
receiver, the refund sender, the reconciler): each shows its name to PostgreSQL, never uses
JIT and keeps its session on release. The server's own pools (server/storage/postgres.py)
add what its batches need."""

from __future__ import annotations

import asyncpg


async def keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset on release: these programs never set session state (no SET, no
    LISTEN, only transaction-scoped advisory locks), so asyncpg's reset (RESET ALL,
    UNLISTEN, unlocking) would be a round trip per query for nothing."""


async def open_pool(
    dsn: str, *, name: str, max_size: int, command_timeout: float, connect_timeout: float = 60.0
) -> asyncpg.Pool:
    """A pool of 1 to `max_size` connections; `name` is what PostgreSQL shows as their
    application."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=max_size,
        command_timeout=command_timeout,
        timeout=connect_timeout,
        # JIT compiles for tens of milliseconds and never pays off for these statements.
        server_settings={"application_name": name, "jit": "off"},
        reset=keep_session,
    )
    assert pool is not None
    return pool
