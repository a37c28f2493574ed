"""Orders, holds, stock, history, payments and events agree: stockcore.invariant_violations()
asserted on one PostgreSQL snapshot (after races and after a crash), whose orders and holds
are returned for the checks a test adds about what its clients saw acknowledged."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from tests.invariants import assert_invariants_hold
from tests.support import connected


@dataclass(frozen=True)
class Snapshot:
    """The orders and holds of the snapshot the invariants held on."""

    orders: dict[str, asyncpg.Record]
    reservations: dict[str, asyncpg.Record]


async def check_orders_agree(dsn: str) -> Snapshot:
    """Assert every invariant; return the snapshot it was checked on."""
    async with connected(dsn) as conn:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await assert_invariants_hold(conn)
            return Snapshot(
                orders={
                    r["order_id"]: r for r in await conn.fetch("SELECT * FROM stockcore.orders")
                },
                reservations={
                    r["reservation_id"]: r
                    for r in await conn.fetch("SELECT * FROM stockcore.reservations")
                },
            )
