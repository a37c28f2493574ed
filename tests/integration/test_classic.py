"""The classic designs of the hot-SKU sale, against the real PostgreSQL: straight from the
buyers, and behind the benchmark's gRPC edge server."""

from __future__ import annotations

import asyncpg
import grpc

from loadtests import classic, edge, sale
from loadtests.driver import record_closed_loop
from tests.conftest import Servers

SKUS = ["hot-0", "hot-1"]


async def test_select_for_update_sells_exactly_the_stock_however_many_buyers(
    clean: Servers, db: asyncpg.Connection
) -> None:
    await classic.reset(db, SKUS, 40)
    buyers = await sale.open_straight(clean.pg_dsn, "select-for-update", SKUS, 16)
    try:
        recording = await record_closed_loop(
            buyers, concurrency=16, duration=60.0, warmup=0.0, stop=buyers.exhausted
        )
    finally:
        await buyers.aclose()

    assert buyers.exhausted.is_set()
    assert recording.outcomes[sale.SOLD] == 80
    assert await classic.tally(db, 40) == classic.Tally(sold=80, oversold=0, remaining=0)


async def test_the_grpc_edge_makes_one_classic_purchase_per_call(
    clean: Servers, db: asyncpg.Connection
) -> None:
    await classic.reset(db, SKUS, 2)
    options = ["--dsn", clean.pg_dsn, "--design", "select-check-update", "--pool", "2"]
    with edge.edge_server("classic", *options) as target:
        async with grpc.aio.insecure_channel(target) as channel:
            buy = channel.unary_unary(edge.BUY, None, None)
            answers = [await buy(b"hot-1", timeout=10) for _ in range(3)]

    assert answers == [edge.SOLD, edge.SOLD, edge.SOLD_OUT]
    assert await classic.tally(db, 2) == classic.Tally(sold=2, oversold=0, remaining=2)
