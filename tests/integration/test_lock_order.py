"""The live SQL takes its locks in one global order (written down at the top of
server/storage/sql/live/orders.sql), shown where it once did not: transactions left open
hold chosen locks, so that each statement under test is caught waiting at a chosen
point, and the statements that would have waited on each other both finish. Statements
run on plain connections, not through the stores, which retry a deadlock and would hide
it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import asyncpg
import pytest

from server.domain.inventory import Line, ReserveCommand
from server.domain.orders import Actor, create_order
from server.domain.sharding import shard_of
from server.storage.orders_pg import CreateCode, OrderStore, order_request
from server.storage.postgres import HoldArrays, StockStore
from tests.conftest import SHARDS, Servers
from tests.support import HOUR_MS, connected, stock_up
from tests.waiting import until

ACTOR = Actor("tests", "req-1")
LIMITS = {"default_ttl_s": 3600.0, "min_ttl_s": 1.0, "max_ttl_s": 86_400.0}
EXPIRY = "stockcore-expiry"
_HOLD = "SELECT * FROM stockcore.hold_stock($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
_CREATE = "SELECT * FROM stockcore.create_orders($1)"
_PAY = "SELECT * FROM stockcore.pay_orders($1, $2, $3, $4, $5, $6, $7, $8)"


Lines = dict[str, int]


async def hold(conn: asyncpg.Connection, requests: dict[str, Lines]) -> list[int]:
    """Reserve each id's lines, ids in order, in one call of hold_stock; the result codes."""
    commands = [
        ReserveCommand(rid, tuple(Line(s, q) for s, q in lines.items()), HOUR_MS, "tests")
        for rid, lines in sorted(requests.items())
    ]
    row = await conn.fetchrow(_HOLD, *HoldArrays.of(commands, SHARDS).args())
    return [int(r["code"]) for r in row["results"]]


async def create(conn: asyncpg.Connection, requests: dict[str, Lines]) -> list[int]:
    """Create each order of its lines, ids in order, in one call of create_orders; the
    result codes."""
    commands = [
        create_order(
            oid, "c-1", [(s, q, 100) for s, q in lines.items()], "EUR", None, ACTOR, **LIMITS
        )
        for oid, lines in sorted(requests.items())
    ]
    row = await conn.fetchrow(_CREATE, [order_request(c, SHARDS) for c in commands])
    return [int(r["code"]) for r in row["results"]]


async def pay(conn: asyncpg.Connection, payments: list[tuple[str, str]]) -> list[int]:
    """Pay (order id, payment id) pairs, sorted by order id, of 100 EUR cents each, in
    one call of pay_orders; their result codes."""
    n = len(payments)
    row = await conn.fetchrow(
        _PAY,
        [oid for oid, _ in payments],
        [pid for _, pid in payments],
        [100] * n,
        ["EUR"] * n,
        ["tests"] * n,
        [f"req-{oid}" for oid, _ in payments],
        ["paid"] * n,
        EXPIRY,
    )
    return [int(r["code"]) for r in row["results"]]


async def waiting_for(dsn: str, waiter: asyncpg.Connection, holder: asyncpg.Connection) -> None:
    """Wait until `waiter`'s statement waits for a lock `holder`'s transaction holds."""

    async def blocked() -> bool:
        async with connected(dsn) as conn:
            return bool(
                await conn.fetchval(
                    "SELECT $2::int = ANY (pg_blocking_pids($1))",
                    waiter.get_server_pid(),
                    holder.get_server_pid(),
                )
            )

    await until(blocked, f"session {waiter.get_server_pid()} waits for {holder.get_server_pid()}")


async def open_transaction(conn: asyncpg.Connection, work: Awaitable[Any]) -> Any:
    """Start a transaction on `conn`, run `work` in it and leave it open."""
    transaction = conn.transaction()
    await transaction.start()
    await work
    return transaction


@pytest.mark.parametrize("kind", ["reserve", "order"])
async def test_a_second_pass_claims_its_ids_before_it_locks_stock(
    kind: str, clean: Servers, store: StockStore
) -> None:
    # B's first pass finds its takes no longer fit and decides its batch again with the
    # stock rows locked, admitting one request of two; A, with that request's id, holds
    # the id meanwhile and waits for a stock row B locked. B must not then wait for A's id.
    first, second = sorted(["K-1", "K-2"], key=lambda s: (shard_of(s, SHARDS), s))
    await stock_up(store, {first: 10, second: 10})
    decide = hold if kind == "reserve" else create
    dsn = clean.pg_dsn
    async with (
        connected(dsn) as t0,
        connected(dsn) as t1,
        connected(dsn) as b,
        connected(dsn) as a,
    ):
        on_first = await open_transaction(t0, hold(t0, {"r-0": {first: 8}}))
        on_second = await open_transaction(t1, hold(t1, {"r-1": {second: 1}}))
        # B reads 10 of each without a lock and waits to take 6 of the first.
        b_done = asyncio.create_task(decide(b, {"x": {first: 1, second: 1}, "y": {first: 5}}))
        await waiting_for(dsn, b, t0)
        # 2 are left: B's second pass locks the first row and waits for the second.
        await on_first.commit()
        await waiting_for(dsn, b, t1)
        # A, with B's id x, waits for B (for the first row, or for the id B claimed).
        a_done = asyncio.create_task(decide(a, {"x": {first: 1}}))
        await waiting_for(dsn, a, b)
        await on_second.commit()

        outcomes = await asyncio.gather(b_done, a_done, return_exceptions=True)

    # B holds x and finds y short; A's request, another one under the id x, is refused.
    assert outcomes == [[0, 3], [2]], outcomes


async def test_payments_take_their_ids_in_payment_id_order(
    clean: Servers, store: StockStore
) -> None:
    await stock_up(store, {"A": 100})
    orders = OrderStore(store)
    created, _ = await orders.create(
        [
            create_order(f"o-{i}", "c-1", [("A", 1, 100)], "EUR", None, ACTOR, **LIMITS)
            for i in range(1, 7)
        ]
    )
    assert [c.code for c in created] == [CreateCode.CREATED] * 6
    dsn = clean.pg_dsn
    async with connected(dsn) as t0, connected(dsn) as one, connected(dsn) as two:
        # T0 holds pay-c, uncommitted. One pays o-1..o-3 with pay-a, pay-c, pay-b and is
        # caught waiting for pay-c; two pays o-4 and o-5 with pay-b and pay-a.
        on_c = await open_transaction(t0, pay(t0, [("o-6", "pay-c")]))
        one_done = asyncio.create_task(
            pay(one, [("o-1", "pay-a"), ("o-2", "pay-c"), ("o-3", "pay-b")])
        )
        await waiting_for(dsn, one, t0)
        two_done = asyncio.create_task(pay(two, [("o-4", "pay-b"), ("o-5", "pay-a")]))
        await waiting_for(dsn, two, one)
        await on_c.rollback()

        outcomes = await asyncio.gather(one_done, two_done, return_exceptions=True)

    # One paid all three; two found both payment ids paying other orders (code 4).
    assert outcomes == [[0, 0, 0], [4, 4]], outcomes
