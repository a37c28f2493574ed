"""PostgreSQL pools of the programs beside the server (the fulfilment worker, the webhook
receiver): each shows its name to PostgreSQL and never uses JIT. The server's own pools
(server/storage/postgres.py) add what its batches need."""

from __future__ import annotations

import asyncpg


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
    )
    assert pool is not None
    return pool
